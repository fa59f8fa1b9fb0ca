"""The embedded HNSW index on hnswlib (``[index] kind = "hnswlib"``, ``pip install 'monorec[hnswlib]'``).

Rows, tombstones, filters and compaction are :class:`~monorec.index.row_index.RowIndex`'s; hnswlib stores
the vectors and the graph (inner product). A dead row is ``mark_deleted`` in the graph, so an unfiltered
search leaves it out by itself: the hot path needs no mask even while entities are overwritten or deleted
(faiss needs a selector then). A filtered search over more than ``exact_below`` rows passes the mask as
hnswlib's filter. hnswlib does not hand its vectors out without copying them, so this index keeps its own
(rows, D) copy for exact search, compaction and :meth:`vectors_of`: ``D * 4`` bytes more per entity than
the faiss backend. Searches run on the calling thread (one query at a time is the serving pattern; a
batch of many on every core); a bulk add of many rows inserts on every core, so, as with faiss's HNSW, the
graph of a bulk load may differ from run to run (within its recall), a stream's small batches do not.

Why a second HNSW library: on 2 cores hnswlib answers one query at a time 1.1-1.3x faster than faiss's
HNSW and builds faster (B1 in docs/benchmarks.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from monorec.errors import ConfigError
from monorec.index.hnswlib_state import GRAPH_STATE_FILE, capture_graph, restore_graph, write_graph
from monorec.index.row_index import RowIndex

__all__ = ["HnswlibIndex"]

GRAPH_FILE = "graph.hnswlib"  # hnswlib's own file: checkpoints before the state file (still read)
VECTORS_FILE = "vectors.npy"
HNSWLIB_INSTALL = "pip install 'monorec[hnswlib]'"
BULK_ROWS = 1024  # an add of at least this many rows is built on BULK_THREADS threads
BATCH_QUERIES = 64  # a search of at least this many queries runs on BULK_THREADS threads
BULK_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _hnswlib() -> Any:
    try:
        import hnswlib
    except ImportError:
        raise ConfigError("index.kind", [f'"hnswlib" needs hnswlib: {HNSWLIB_INSTALL}']) from None
    return hnswlib


class HnswlibIndex(RowIndex):
    """An in-process hnswlib index of one version's item embeddings (see the module docstring)."""

    LIVE_SEARCH_COMPLETE = True  # hnswlib answers k rows for every query or raises (then None: see _query)

    def __init__(self, dim: int, **params: Any) -> None:
        self._lib = _hnswlib()
        super().__init__(dim, **params)  # see RowIndex for the parameters

    def _new_graph(self, capacity: int) -> Any:
        graph = self._lib.Index(space="ip", dim=self.dim)
        graph.init_index(
            max_elements=capacity, ef_construction=int(self.params["ef_construction"]), M=int(self.params["hnsw_m"])
        )
        graph.set_ef(int(self.params["ef_search"]))
        graph.set_num_threads(1)  # a query at a time is the serving pattern; a pool per call only costs
        return graph

    def _new_store(self) -> None:
        self._graph = self._new_graph(1024)
        self._data = np.zeros((1024, self.dim), dtype=np.float32)  # rows 0..n-1 hold the vectors
        self._n = 0

    def _add(self, vectors: np.ndarray) -> None:
        start, end = self._n, self._n + len(vectors)
        if end > len(self._data):
            capacity = max(2 * len(self._data), end)
            grown = np.zeros((capacity, self.dim), dtype=np.float32)
            grown[:start] = self._data[:start]
            self._data = grown
            self._graph.resize_index(capacity)
        self._data[start:end] = vectors
        if len(vectors):
            # a bulk load inserts on every core (as faiss's HNSW does), a stream's small batches on one
            threads = BULK_THREADS if len(vectors) >= BULK_ROWS else 1
            self._graph.add_items(vectors, np.arange(start, end, dtype=np.int64), num_threads=threads)
        self._n = end

    def _count(self) -> int:
        return self._n

    def _vectors(self) -> np.ndarray:
        return self._data[: self._n]

    def _on_dead(self, row: int) -> None:
        self._graph.mark_deleted(row)

    def _query(
        self, q: np.ndarray, k: int, allowed: Callable[[int], bool] | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(scores, labels) of hnswlib's search, or None when it cannot find k for every query (a graph
        thinned by deletions, a narrow filter): the caller then answers exactly."""
        threads = BULK_THREADS if len(q) >= BATCH_QUERIES else 1  # a large batch: one query per core at once
        try:
            labels, distances = self._graph.knn_query(q, k=k, num_threads=threads, filter=allowed)
        except RuntimeError:
            return None
        np.subtract(1.0, distances, out=distances)  # "ip" distance is 1 - dot: the score, in place
        return distances, labels.view(np.int64)  # row numbers < 2**63: the same bits

    def _search_live(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        return self._query(q, k, None)  # dead rows are marked deleted in the graph

    def _search_masked(self, q: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        found = self._query(q, k, None if mask is None else mask.__getitem__)
        if found is None:  # every query is then answered exactly by the caller
            return np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64)
        return found

    def set_ef_search(self, ef: int) -> None:
        """HNSW's search breadth (recall vs speed), for every following search."""
        self.params["ef_search"] = ef
        self._graph.set_ef(ef)

    def _dump_store(self, path: Path) -> Callable[[], None]:
        state = capture_graph(self._graph)  # arrays, written below without the GIL (see hnswlib_state)
        return lambda: write_graph(state, path / GRAPH_STATE_FILE)

    def _load_store(self, path: Path) -> None:
        if (path / GRAPH_STATE_FILE).exists():
            graph, vectors = restore_graph(self._lib, path / GRAPH_STATE_FILE, self.dim)
        else:  # a checkpoint written before the state file: hnswlib's own file and the vectors beside it
            vectors = np.load(path / VECTORS_FILE, allow_pickle=False)
            if vectors.ndim != 2 or vectors.shape[1] != self.dim or vectors.dtype != np.float32:
                raise ValueError(
                    f"vectors of shape {vectors.shape} ({vectors.dtype}), the index's dimension is {self.dim}"
                )
            graph = self._lib.Index(space="ip", dim=self.dim)
            graph.load_index(str(path / GRAPH_FILE), max_elements=max(len(vectors), 1024))
        if graph.get_current_count() != len(vectors):
            raise ValueError(f"the graph holds {graph.get_current_count()} rows, the vectors {len(vectors)}")
        capacity = max(len(vectors), 1024)
        if graph.get_max_elements() < capacity:
            graph.resize_index(capacity)
        graph.set_ef(int(self.params["ef_search"]))
        graph.set_num_threads(1)
        self._graph, self._n = graph, len(vectors)
        self._data = np.zeros((capacity, self.dim), dtype=np.float32)
        self._data[: self._n] = vectors

    @classmethod
    def load(cls, path: str | Path, dim: int, **params: Any) -> HnswlibIndex:
        """Reads an index :meth:`save` wrote (ArtifactError when it does not load or its parts disagree)."""
        index = cls(dim, **params)
        index._restore(Path(path))
        return index
