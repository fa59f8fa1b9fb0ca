"""The embedded index: faiss in process, exact (IndexFlatIP) or approximate (IndexHNSWFlat).

Rows, tombstones, filters and compaction are :class:`~monorec.index.row_index.RowIndex`'s; faiss stores the
vectors. A mask of admissible rows (filters, dead rows) becomes an ``IDSelectorBitmap`` at search time, so
only a store without dead rows answers an unfiltered search without one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import faiss as _faiss
import numpy as np

from monorec.index.row_index import RowIndex

__all__ = ["FaissIndex"]

faiss: Any = _faiss  # its SWIG stubs lack SearchParametersHNSW, selectors in SearchParameters, get_xb...

VECTORS_FILE = "vectors.faiss"


class FaissIndex(RowIndex):
    """An in-process faiss index of one version's item embeddings (see the module docstring)."""

    def __init__(self, dim: int, *, kind: Literal["exact", "hnsw"] = "exact", **params: Any) -> None:
        self.kind = kind
        super().__init__(dim, **params)  # see RowIndex for the parameters

    def _new_store(self) -> None:
        self._view: np.ndarray | None = None  # _vectors' numpy view of faiss's storage, until the storage changes
        if self.kind == "exact":
            self._faiss = faiss.IndexFlatIP(self.dim)
            return
        index = faiss.IndexHNSWFlat(self.dim, int(self.params["hnsw_m"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(self.params["ef_construction"])
        index.hnsw.efSearch = int(self.params["ef_search"])
        self._faiss = index

    def _add(self, vectors: np.ndarray) -> None:
        self._view = None  # the add may move the storage
        self._faiss.add(vectors)

    def _count(self) -> int:
        return int(self._faiss.ntotal)

    def _vectors(self) -> np.ndarray:
        if self._view is not None:  # kept between calls: the SWIG calls below cost more than a gather of 200
            return self._view
        flat = self._faiss if self.kind == "exact" else faiss.downcast_index(self._faiss.storage)
        n = self._faiss.ntotal
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._view = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)
        return self._view

    def _search_live(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        if self._dead:
            return None  # dead rows are left out by a selector only
        scores, labels = self._faiss.search(q, k)  # efSearch is set on the index itself
        return scores, labels

    def _search_masked(self, q: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        bitmap = None if mask is None else np.packbits(mask, bitorder="little")  # alive until the search ends
        selector = None if mask is None else faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        if self.kind == "hnsw":
            ef = int(self.params["ef_search"])
            params = (
                faiss.SearchParametersHNSW(efSearch=ef)
                if selector is None
                else faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
            )
        else:
            params = None if selector is None else faiss.SearchParameters(sel=selector)
        scores, labels = self._faiss.search(q, k, params=params)
        del bitmap
        return scores, labels

    def set_ef_search(self, ef: int) -> None:
        """HNSW's search breadth (recall vs speed), for every following search."""
        self.params["ef_search"] = ef
        if self.kind == "hnsw":
            self._faiss.hnsw.efSearch = ef

    def _dump_store(self, path: Path) -> Callable[[], None]:
        blob = faiss.serialize_index(self._faiss)  # at memory speed, writes excluded (faiss releases the GIL)
        return lambda: blob.tofile(path / VECTORS_FILE)

    def _load_store(self, path: Path) -> None:
        self._view = None
        self._faiss = faiss.read_index(str(path / VECTORS_FILE))
        if self._faiss.d != self.dim:
            raise ValueError(f"vectors of dimension {self._faiss.d}, the index has {self.dim}")
        if self.kind == "hnsw":
            self._faiss.hnsw.efSearch = int(self.params["ef_search"])

    @classmethod
    def load(cls, path: str | Path, dim: int, kind: Literal["exact", "hnsw"], **params: Any) -> FaissIndex:
        """Reads an index :meth:`save` wrote (ArtifactError when it does not load or its parts disagree)."""
        index = cls(dim, kind=kind, **params)
        index._restore(Path(path))
        return index
