"""The embedded index: faiss in process, exact (IndexFlatIP) or approximate (IndexHNSWFlat).

faiss indexes are append-only here: an overwritten or deleted entity's row is marked dead and excluded
with an ``IDSelectorBitmap`` at search time, and the index is rebuilt from its live rows once more than
``compact_above`` of them are dead. Filters (entity types, categories) become the same bitmap. A filtered
search over few entities (``exact_below``) is answered by brute force over exactly those rows; a larger one
goes through the graph with the selector, and any query that comes back with fewer than k hits while the
filter admits at least k is answered exactly instead, so a filter never silently loses results.

Thread safety: one lock serialises writes and searches (faiss indexes are not safe to search while adding).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import faiss as _faiss
import numpy as np

from monorec.artifacts import pack_strings, unpack_strings
from monorec.errors import ArtifactError
from monorec.index.base import EntityFilter, EntityRows, Hits, RevisionBook, empty_hits, top_k_rows

__all__ = ["FaissIndex"]

faiss: Any = _faiss  # its SWIG stubs lack SearchParametersHNSW, selectors in SearchParameters, get_xb...

_CATEGORY_SEPARATOR = "\x1f"


class FaissIndex:
    """An in-process faiss index of one version's item embeddings (see the module docstring)."""

    def __init__(
        self,
        dim: int,
        *,
        kind: Literal["exact", "hnsw"] = "exact",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        exact_below: int = 20000,
        compact_above: float = 0.25,
    ) -> None:
        self.dim = dim
        self.kind = kind
        self.params = {
            "hnsw_m": hnsw_m,
            "ef_construction": ef_construction,
            "ef_search": ef_search,
            "exact_below": exact_below,
            "compact_above": compact_above,
        }
        self.book = RevisionBook()
        self._lock = threading.Lock()
        self._reset_rows()

    # ----------------------------------------------------------------------------------------- storage

    def _new_faiss(self) -> Any:
        if self.kind == "exact":
            return faiss.IndexFlatIP(self.dim)
        index = faiss.IndexHNSWFlat(self.dim, int(self.params["hnsw_m"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(self.params["ef_construction"])
        index.hnsw.efSearch = int(self.params["ef_search"])
        return index

    def _reset_rows(self) -> None:
        self._faiss = self._new_faiss()
        # row -> entity id (dead rows too), an object array with spare capacity so that a search maps labels
        # to ids with one vectorised take; the slot after the last row stays None (label -1 maps there)
        self._row_ids = np.full(1024, None, dtype=object)
        self._alive = np.zeros(0, dtype=np.bool_)
        self._row_types: list[str] = []
        self._row_categories: list[tuple[str, ...]] = []
        self._row_of: dict[str, int] = {}  # live entity id -> row
        self._type_codes = np.zeros(0, dtype=np.int32)  # row -> code of its type (filters are numpy masks)
        self._type_code_of: dict[str, int] = {}
        self._category_rows: dict[str, list[int]] = {}  # category -> rows that carry it (dead ones too)
        self._dead = 0

    def _vectors(self) -> np.ndarray:
        """(rows, D) view of the stored vectors (no copy; valid until the next write)."""
        flat = self._faiss if self.kind == "exact" else faiss.downcast_index(self._faiss.storage)
        n = self._faiss.ntotal
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)

    def _append(self, ids: list[str], types: list[str], cats: list[tuple[str, ...]], vectors: np.ndarray) -> None:
        start = self._faiss.ntotal
        self._faiss.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self._register(start, ids, types, cats, np.ones(len(ids), dtype=np.bool_))

    def _register(
        self, start: int, ids: list[str], types: list[str], cats: list[tuple[str, ...]], alive: np.ndarray
    ) -> None:
        """Records the metadata of rows ``start..start+len(ids)`` (their vectors are already in faiss)."""
        end = start + len(ids)
        if end + 1 > len(self._row_ids):
            grown = np.full(max(2 * len(self._row_ids), end + 1), None, dtype=object)
            grown[:start] = self._row_ids[:start]
            self._row_ids = grown
        self._row_ids[start:end] = ids
        self._row_types.extend(types)
        self._row_categories.extend(cats)
        self._alive = np.concatenate([self._alive, alive])
        self._dead += int((~alive).sum())
        codes = [self._type_code_of.setdefault(t, len(self._type_code_of)) for t in types]
        self._type_codes = np.concatenate([self._type_codes, np.array(codes, dtype=np.int32)])
        for offset, (entity_id, entity_cats) in enumerate(zip(ids, cats, strict=True)):
            if alive[offset]:
                self._row_of[entity_id] = start + offset
            for c in entity_cats:
                self._category_rows.setdefault(c, []).append(start + offset)

    def _kill(self, entity_id: str) -> bool:
        row = self._row_of.pop(entity_id, None)
        if row is None:
            return False
        self._alive[row] = False
        self._dead += 1
        return True

    def _maybe_compact(self) -> None:
        total = self._faiss.ntotal
        if self._dead == 0 or self._dead <= self.params["compact_above"] * total:
            return
        rows = np.flatnonzero(self._alive)
        vectors = self._vectors()[rows].copy()
        ids = [self._row_ids[r] for r in rows]
        types = [self._row_types[r] for r in rows]
        cats = [self._row_categories[r] for r in rows]
        self._reset_rows()
        if len(ids):
            self._append(ids, types, cats, vectors)

    # ------------------------------------------------------------------------------------------ writes

    def upsert(self, rows: EntityRows) -> int:
        if len(rows) and rows.vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {rows.vectors.shape[1]}, the index {self.dim}")
        with self._lock:
            positions = self.book.newer_rows(rows.ids, rows.revisions)
            if not positions:
                return 0
            keep = rows.take(positions)
            for entity_id, revision in zip(keep.ids, keep.revisions.tolist(), strict=True):
                self._kill(entity_id)
                self.book.record(entity_id, revision, deleted=False)
            self._append(list(keep.ids), list(keep.types), [tuple(c) for c in keep.categories], keep.vectors)
            self._maybe_compact()
            return len(keep)

    def newer_rows(self, ids: Sequence[str], revisions: np.ndarray) -> list[int]:
        with self._lock:
            return self.book.newer_rows(ids, revisions)

    def delete(self, ids: Sequence[str], revisions: Sequence[int]) -> int:
        removed = 0
        with self._lock:
            for entity_id, revision in zip(ids, revisions, strict=True):
                if self.book.newer(entity_id, int(revision)):
                    removed += self._kill(entity_id)
                    self.book.record(entity_id, int(revision), deleted=True)
            self._maybe_compact()
        return removed

    # ----------------------------------------------------------------------------------------- reads

    def __len__(self) -> int:
        return len(self._row_of)

    def revisions(self) -> dict[str, int]:
        with self._lock:
            return {e: self.book.applied[e] for e in self._row_of}

    def vectors_of(self, ids: Sequence[str]) -> np.ndarray:
        with self._lock:
            rows = [self._row_of[i] for i in ids]
            return self._vectors()[rows].copy()

    def _mask(self, where: EntityFilter | None) -> np.ndarray | None:
        """Rows a search may return, or None when every stored row may."""
        if (where is None or where.is_empty) and self._dead == 0:
            return None
        mask = self._alive.copy()
        if where is not None and where.entity_types is not None:
            codes = [self._type_code_of[t] for t in where.entity_types if t in self._type_code_of]
            mask &= np.isin(self._type_codes, codes)
        if where is not None and where.categories is not None:
            in_category = np.zeros_like(mask)
            for c in where.categories:
                in_category[self._category_rows.get(c, [])] = True
            mask &= in_category
        return mask

    def _search_params(self, mask: np.ndarray | None) -> tuple[Any, Any]:
        """faiss search parameters restricted to ``mask`` (and the bitmap, kept alive by the caller)."""
        bitmap = None if mask is None else np.packbits(mask, bitorder="little")
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
        return params, (bitmap, selector)

    def _exact(self, queries: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = queries @ self._vectors()[rows].T
        pos, vals = top_k_rows(scores, k)
        return rows[pos], vals

    def search(self, queries: np.ndarray, k: int, where: EntityFilter | None = None) -> Hits:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if not q.flags.c_contiguous:
            q = np.ascontiguousarray(q)
        with self._lock:
            if k > 0 and self._faiss.ntotal and self._dead == 0 and (where is None or where.is_empty):
                # the hot path: no filter, no dead rows; efSearch is set on the index itself
                scores, labels = self._faiss.search(q, k)
            else:
                found = self._filtered_search(q, k, where)
                if found is None:
                    return empty_hits(len(q), k)
                labels, scores = found
            # the slot after the last row is None, and so is the array's last slot, where label -1 lands
            ids = self._row_ids[labels]
        missing = labels < 0
        if missing.any():
            scores = np.where(missing, np.float32(-np.inf), scores)
        if labels.shape[1] < k:  # fewer rows than k admitted: pad to the promised (Q, k)
            padded = empty_hits(len(q), k)
            padded.ids[:, : labels.shape[1]], padded.scores[:, : labels.shape[1]] = ids, scores
            return padded
        return Hits(ids, scores)

    def _filtered_search(
        self, q: np.ndarray, k: int, where: EntityFilter | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, scores) within the filter and the live rows (None when nothing is admissible)."""
        mask = self._mask(where)
        allowed = self._faiss.ntotal if mask is None else int(mask.sum())
        if allowed == 0 or k <= 0:
            return None
        if mask is not None and allowed <= self.params["exact_below"]:
            return self._exact(q, k, np.flatnonzero(mask))
        params, _keep_alive = self._search_params(mask)
        scores, labels = self._faiss.search(q, k, params=params)
        short = np.flatnonzero((labels < 0).any(axis=1)) if allowed >= k else np.zeros(0, dtype=np.int64)
        if len(short):  # the graph found fewer than k admissible rows: answer those exactly
            rows = np.arange(self._faiss.ntotal) if mask is None else np.flatnonzero(mask)
            exact_labels, exact_scores = self._exact(q[short], k, rows)
            labels[short, : exact_labels.shape[1]] = exact_labels
            scores[short, : exact_scores.shape[1]] = exact_scores
        return labels, scores

    def set_ef_search(self, ef: int) -> None:
        """HNSW's search breadth (recall vs speed), for every following search."""
        self.params["ef_search"] = ef
        if self.kind == "hnsw":
            self._faiss.hnsw.efSearch = ef

    # ------------------------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with self._lock:  # a consistent snapshot at memory speed; searches wait only for this part
            blob = faiss.serialize_index(self._faiss)
            n = self._faiss.ntotal
            row_ids, alive = self._row_ids[:n].copy(), self._alive.copy()
            row_types, row_categories = list(self._row_types), list(self._row_categories)
            book = RevisionBook(self.book.applied, self.book.deleted)
        blob.tofile(path / "vectors.faiss")
        arrays: dict[str, Any] = book.to_arrays()
        np.savez(
            path / "rows.npz",
            row_ids=pack_strings([str(i) for i in row_ids]),
            alive=alive,
            row_types=pack_strings(row_types),
            row_categories=pack_strings([_CATEGORY_SEPARATOR.join(c) for c in row_categories]),
            **arrays,
        )

    @classmethod
    def load(cls, path: str | Path, dim: int, kind: Literal["exact", "hnsw"], **params: Any) -> FaissIndex:
        path = Path(path)
        index = cls(dim, kind=kind, **params)
        try:
            index._faiss = faiss.read_index(str(path / "vectors.faiss"))
            with np.load(path / "rows.npz", allow_pickle=False) as arrays:
                data = {k: arrays[k] for k in arrays.files}
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{path}: the index does not load: {exc}") from None
        ids = unpack_strings(data["row_ids"])
        types = unpack_strings(data["row_types"])
        cats = [tuple(c.split(_CATEGORY_SEPARATOR)) if c else () for c in unpack_strings(data["row_categories"])]
        if index._faiss.d != dim or index._faiss.ntotal != len(ids):
            raise ArtifactError(f"{path}: the index does not match its rows (dimension or row count)")
        if kind == "hnsw":
            index._faiss.hnsw.efSearch = int(index.params["ef_search"])
        index._register(0, ids, types, cats, data["alive"].astype(np.bool_))
        index.book = RevisionBook.from_arrays(data)
        return index

    def close(self) -> None:
        """Frees the vectors (the saved files are the caller's)."""
        with self._lock:
            self._reset_rows()

    drop = close
