"""What the in-process index backends share: rows appended to a vector store, their metadata, tombstones,
filters, compaction and the revision book.

A backend (:class:`~monorec.index.faiss_index.FaissIndex`, :class:`~monorec.index.hnswlib_index.HnswlibIndex`)
stores vectors by row number and searches them; :class:`RowIndex` maps rows to entities. Stored rows are
append-only: an overwritten or deleted entity's row is marked dead, and the store is rebuilt from its live
rows once more than ``compact_above`` of them are dead. Filters (entity types, categories) and dead rows
become a boolean mask over the rows. A filtered search over few entities (``exact_below``) is answered by
brute force over exactly those rows; a larger one goes through the backend's masked search, and any query
that comes back with fewer than k hits while the filter admits at least k is answered exactly instead, so
a filter never silently loses results.

Thread safety: one lock serialises writes and searches (graph indexes are not safe to search while adding).
Nothing slow holds it: a streamed write can take it per chunk of rows (``write_chunk``), and the rebuild
of a compaction runs outside it on a copy, which replaces the store once it has caught up. A second lock
is held by every write for its whole length and by :meth:`RowIndex.save`: a checkpoint's copy of the
store excludes writes, not searches (both only read), so the version it snapshots keeps answering.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monorec.artifacts import GrowingStringPack, unpack_strings
from monorec.errors import ArtifactError
from monorec.index.base import EntityFilter, EntityRows, Hits, RevisionBook, empty_hits, top_k_rows

__all__ = ["RowIndex"]

_CATEGORY_SEPARATOR = "\x1f"
ROWS_FILE = "rows.npz"


class RowIndex:
    """Rows of one version's item embeddings in a backend's vector store (see the module docstring).

    Subclasses implement the store: :meth:`_new_store`, :meth:`_add`, :meth:`_count`, :meth:`_vectors`,
    :meth:`_search_live`, :meth:`_search_masked`, :meth:`_dump_store`, :meth:`_load_store`, and may react to
    a row's death (:meth:`_on_dead`).
    """

    LIVE_SEARCH_COMPLETE = False  # True: the store's live search returns k rows or None, never a -1 label

    def __init__(
        self,
        dim: int,
        *,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        exact_below: int = 20000,
        compact_above: float = 0.25,
    ) -> None:
        self.dim = dim
        self.params: dict[str, Any] = {
            "hnsw_m": hnsw_m,  # a graph store's links per node, breadth when building and when searching
            "ef_construction": ef_construction,
            "ef_search": ef_search,
            "exact_below": exact_below,
            "compact_above": compact_above,
        }
        self.book = RevisionBook()
        self._lock = threading.Lock()
        # writes hold it (then ``_lock``) throughout; a save holds only this one, so searches go on while it
        # copies (serialising a 100k-row graph takes ~50-100 ms: every request of the version waited for it)
        self._write_lock = threading.Lock()
        self._compacting = False  # a compaction is rebuilding the store (see _compact_if_due)
        self._reset_rows()

    # ---------------------------------------------------------------------------- the backend's store

    def _new_store(self) -> None:
        """Replaces the store by an empty one."""
        raise NotImplementedError

    def _add(self, vectors: np.ndarray) -> None:
        """Appends (N, D) float32 C-contiguous vectors as rows ``count..count+N``."""
        raise NotImplementedError

    def _count(self) -> int:
        """Rows stored, dead ones included."""
        raise NotImplementedError

    def _vectors(self) -> np.ndarray:
        """(rows, D) float32 stored vectors (a view where the store allows; valid until the next write)."""
        raise NotImplementedError

    def _search_live(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(scores, labels) (Q, k) over the live rows without a mask (labels -1 past the last hit), or None
        when the store cannot leave dead rows out by itself."""
        raise NotImplementedError

    def _search_masked(self, q: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, labels) (Q, k) over the rows ``mask`` admits (None: every stored row), -1 past the last
        hit found (approximate stores may find fewer than k)."""
        raise NotImplementedError

    def _on_dead(self, row: int) -> None:
        """A row died (its entity was overwritten or deleted)."""
        del row

    def _dump_store(self, path: Path) -> Callable[[], None]:
        """Called while no write runs (searches may): takes a consistent copy of the store and returns what
        writes it into the folder ``path`` (called once writes may run again)."""
        raise NotImplementedError

    def _load_store(self, path: Path) -> None:
        """Reads the store :meth:`_dump_store` wrote (RuntimeError, OSError or ValueError when it does not
        load or does not hold vectors of this index's dimension)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ row metadata

    def _reset_rows(self) -> None:
        self._new_store()
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
        # the rows' ids, types and categories as saved: rows are append-only, so a save encodes new rows only
        self._saved_rows = (GrowingStringPack(), GrowingStringPack(), GrowingStringPack())

    def _append(self, ids: list[str], types: list[str], cats: list[tuple[str, ...]], vectors: np.ndarray) -> None:
        start = self._count()
        self._add(np.ascontiguousarray(vectors, dtype=np.float32))
        self._register(start, ids, types, cats, np.ones(len(ids), dtype=np.bool_))

    def _register(
        self, start: int, ids: list[str], types: list[str], cats: list[tuple[str, ...]], alive: np.ndarray
    ) -> None:
        """Records the metadata of rows ``start..start+len(ids)`` (their vectors are already stored)."""
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
        code_of = self._type_code_of
        for t in dict.fromkeys(types):  # new types in order of appearance: the same codes in every process
            if t not in code_of:
                code_of[t] = len(code_of)
        codes = np.fromiter(map(code_of.__getitem__, types), dtype=np.int32, count=len(types))
        self._type_codes = np.concatenate([self._type_codes, codes])
        rows = range(start, end)
        if alive.all():  # (a bulk page, a streamed batch) one update, not a loop
            self._row_of.update(zip(ids, rows, strict=True))
        else:
            self._row_of.update((e, r) for e, r, a in zip(ids, rows, alive.tolist(), strict=True) if a)
        category_rows = self._category_rows
        for row, entity_cats in zip(rows, cats, strict=True):
            for c in entity_cats:
                if c in category_rows:
                    category_rows[c].append(row)
                else:
                    category_rows[c] = [row]

    def _kill(self, entity_id: str) -> bool:
        row = self._row_of.pop(entity_id, None)
        if row is None:
            return False
        self._alive[row] = False
        self._dead += 1
        self._on_dead(row)
        return True

    def _compact_if_due(self) -> None:
        """Rebuilds the store from its live rows once more than ``compact_above`` of them are dead (a graph
        cannot drop a row). The rebuild runs in the calling writer's thread OUTSIDE the lock: rebuilding a
        graph of 100k rows takes ~12 s on one core, and under the lock every search of the version would
        wait that long. Searches and other writes go on meanwhile against the old store; what was written
        since the snapshot is carried into the new store when it replaces the old one, under the lock."""
        if self._compacting or self._dead <= self.params["compact_above"] * self._count():
            return  # not due (read without the lock: a write's usual path takes it once per chunk only)
        with self._lock:
            total = self._count()
            if self._compacting or self._dead == 0 or self._dead <= self.params["compact_above"] * total:
                return
            self._compacting = True
            live = np.flatnonzero(self._alive)
            vectors = self._vectors()[live].copy()
            meta = self._metadata(live)
        try:
            fresh = copy.copy(self)  # the same parameters and backend; its own rows and store from here on
            fresh._reset_rows()
            if len(live):
                fresh._append(*meta, vectors)
            with self._write_lock, self._lock:
                if self._count() < total:
                    return  # reset meanwhile (closed, or compacted by another path): nothing to carry over
                for row in live[~self._alive[live]]:  # killed since the snapshot
                    fresh._kill(self._row_ids[row])
                later = np.arange(total, self._count())
                later = later[self._alive[later]]  # written since the snapshot and still live
                if len(later):
                    fresh._append(*self._metadata(later), self._vectors()[later].copy())
                self.__dict__.update(fresh.__dict__)  # the new rows and store; lock, book and params are shared
        finally:
            self._compacting = False  # also after the update above, which copied the snapshot's True

    def _metadata(self, rows: np.ndarray) -> tuple[list[str], list[str], list[tuple[str, ...]]]:
        """(ids, types, categories) of stored ``rows``."""
        return (
            [self._row_ids[r] for r in rows],
            [self._row_types[r] for r in rows],
            [self._row_categories[r] for r in rows],
        )

    # ------------------------------------------------------------------------------------------ writes

    def upsert(self, rows: EntityRows, *, write_chunk: int | None = None) -> int:
        """Writes newer revisions of entities; returns how many it wrote. With ``write_chunk``, that many rows
        are written per hold of the lock and the lock is released between chunks, so that a search waits
        for one chunk's insert, not a whole batch's (a graph insert costs ~0.1 ms a vector: a loader's
        batch of 512 changes would hold every search of a serving version for ~50 ms). Without it the
        batch is written at once (a bulk load: a graph store inserts a large batch on several threads)."""
        if len(rows) and rows.vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {rows.vectors.shape[1]}, the index {self.dim}")
        if write_chunk is None or len(rows) <= write_chunk:
            written = self._upsert_chunk(rows)
        else:
            written = sum(
                self._upsert_chunk(rows.take(range(start, min(start + write_chunk, len(rows)))))
                for start in range(0, len(rows), write_chunk)
            )
        self._compact_if_due()
        return written

    def _upsert_chunk(self, rows: EntityRows) -> int:
        """:meth:`upsert` of rows written at once: a search sees all of them or none."""
        with self._write_lock, self._lock:
            positions = self.book.newer_rows(rows.ids, rows.revisions)
            if not positions:
                return 0
            keep = rows if len(positions) == len(rows) else rows.take(positions)
            row_of = self._row_of
            for entity_id in keep.ids:  # what the rows replace (none in a bulk load's fresh ids)
                if entity_id in row_of:
                    self._kill(entity_id)
            self.book.record_live(keep.ids, keep.revisions.tolist())  # positions hold each id once
            self._append(list(keep.ids), list(keep.types), [tuple(c) for c in keep.categories], keep.vectors)
            return len(keep)

    def newer_rows(self, ids: Sequence[str], revisions: np.ndarray) -> list[int]:
        with self._lock:
            return self.book.newer_rows(ids, revisions)

    def current_rows(self, ids: Sequence[str], revisions: np.ndarray, *, deleted: bool = False) -> list[int]:
        with self._lock:
            return self.book.current_rows(ids, revisions, deleted=deleted)

    def delete(self, ids: Sequence[str], revisions: Sequence[int]) -> int:
        removed = 0
        with self._write_lock, self._lock:
            for entity_id, revision in zip(ids, revisions, strict=True):
                if self.book.newer(entity_id, int(revision)):
                    removed += self._kill(entity_id)
                    self.book.record(entity_id, int(revision), deleted=True)
        self._compact_if_due()
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
            return self._vectors()[rows]  # a fancy index copies: the result outlives the view

    def _mask(self, where: EntityFilter | None, members: np.ndarray | None = None) -> np.ndarray | None:
        """Rows a search may return, or None when every stored row may (``members``: the filter's
        :meth:`_category_members` when it has categories and they are known already)."""
        if (where is None or where.is_empty) and self._dead == 0:
            return None
        if where is not None and where.categories is not None:
            mask = np.zeros_like(self._alive)
            mask[self._category_members(where) if members is None else members] = True
            return mask
        mask = self._alive.copy()
        if where is not None and where.entity_types is not None:
            mask &= np.isin(self._type_codes, self._type_codes_of(where.entity_types))
        return mask

    def _type_codes_of(self, types: Sequence[str]) -> list[int]:
        return [self._type_code_of[t] for t in types if t in self._type_code_of]

    def _category_members(self, where: EntityFilter) -> np.ndarray:
        """(M,) sorted live rows of the filter's categories (and types, when it names some), found through
        each category's rows: a small category costs its members, not a pass over every row."""
        assert where.categories is not None
        lists = [self._category_rows[c] for c in where.categories if c in self._category_rows]
        if not lists:
            return np.zeros(0, dtype=np.int64)
        rows = np.unique(np.concatenate([np.asarray(rows, dtype=np.int64) for rows in lists]))
        rows = rows[self._alive[rows]]
        if where.entity_types is not None:
            rows = rows[np.isin(self._type_codes[rows], self._type_codes_of(where.entity_types))]
        return rows

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
            found, live = None, len(self._row_of)
            if k > 0 and live and (where is None or where.is_empty):
                found = self._search_live(q, min(k, live))  # the hot path: no mask
            complete = found is not None and self.LIVE_SEARCH_COMPLETE
            if found is not None:
                scores, labels = found
            else:
                filtered = self._filtered_search(q, k, where)
                if filtered is None:
                    return empty_hits(len(q), k)
                labels, scores = filtered
            # the slot after the last row is None, and so is the array's last slot, where label -1 lands
            ids = self._row_ids[labels]
        if not complete:
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
        members = None
        if where is not None and where.categories is not None:
            members = self._category_members(where)
            if len(members) <= self.params["exact_below"]:  # the usual case: a category is small
                return self._exact(q, k, members) if len(members) and k > 0 else None
        mask = self._mask(where, members)
        allowed = self._count() if mask is None else int(mask.sum())
        if allowed == 0 or k <= 0:
            return None
        if mask is not None and allowed <= self.params["exact_below"]:
            return self._exact(q, k, np.flatnonzero(mask))
        scores, labels = self._search_masked(q, min(k, allowed), mask)
        short = np.flatnonzero((labels < 0).any(axis=1))
        if len(short):  # the graph found fewer than k admissible rows: answer those exactly
            rows = np.arange(self._count()) if mask is None else np.flatnonzero(mask)
            exact_labels, exact_scores = self._exact(q[short], k, rows)
            labels[short, : exact_labels.shape[1]] = exact_labels
            scores[short, : exact_scores.shape[1]] = exact_scores
        return labels, scores

    # ------------------------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        self.start_save(path)()

    def start_save(self, path: str | Path) -> Callable[[], None]:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with self._write_lock:  # a consistent snapshot (no write meanwhile); searches do not wait for it
            write_store = self._dump_store(path)
            n = self._count()
            alive = self._alive.copy()
            row_ids, row_types, row_categories = self._pack_rows(n)
            book: dict[str, Any] = self.book.to_arrays()

        def finish() -> None:  # from copies only: writes may go on meanwhile
            write_store()
            np.savez(
                path / ROWS_FILE,
                row_ids=row_ids,
                alive=alive,
                row_types=row_types,
                row_categories=row_categories,
                **book,
            )

        return finish

    def _pack_rows(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ids, types and categories of rows ``0..n`` packed for a save (with writes excluded), each
        row encoded once in the life of the store (see :class:`~monorec.artifacts.GrowingStringPack`)."""
        ids, types, categories = self._saved_rows
        start = ids.count
        ids.extend([str(i) for i in self._row_ids[start:n]])
        types.extend(self._row_types[start:n])
        categories.extend([_CATEGORY_SEPARATOR.join(c) for c in self._row_categories[start:n]])
        return ids.packed(), types.packed(), categories.packed()

    def _restore(self, path: Path) -> None:
        """Reads what :meth:`save` wrote into this (new) index.

        Raises:
            ArtifactError: a file does not load, or the store and its rows disagree.
        """
        try:
            self._load_store(path)
            with np.load(path / ROWS_FILE, allow_pickle=False) as arrays:
                data = {k: arrays[k] for k in arrays.files}
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{path}: the index does not load: {exc}") from None
        ids = unpack_strings(data["row_ids"])
        types = unpack_strings(data["row_types"])
        cats = [tuple(c.split(_CATEGORY_SEPARATOR)) if c else () for c in unpack_strings(data["row_categories"])]
        if self._count() != len(ids):
            raise ArtifactError(f"{path}: the index does not match its rows (dimension or row count)")
        self._register(0, ids, types, cats, data["alive"].astype(np.bool_))  # the store keeps its own marks
        self.book = RevisionBook.from_arrays(data)

    def close(self) -> None:
        """Frees the vectors (the saved files are the caller's)."""
        with self._write_lock, self._lock:
            self._reset_rows()

    drop = close
