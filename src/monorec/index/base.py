"""The vector index protocol every backend implements, and the revision book they share.

An index holds one model version's item embeddings: entity id -> (vector, entity type, categories,
revision). Writes carry revisions and are idempotent: an upsert or delete whose revision is not newer than
the one already applied for that id is ignored, so replaying a change log (or bulk-loading an older
snapshot after newer changes) never goes back in time. Deletes leave a tombstone revision for the same
reason.

Scores are inner products (the towers' embeddings are unit-norm, so this is cosine similarity).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from monorec.artifacts import GrowingStringPack, unpack_strings

__all__ = ["EntityFilter", "EntityRows", "Hits", "RevisionBook", "VectorIndex"]


@dataclass(frozen=True)
class EntityFilter:
    """Which entities a search may return: any of ``entity_types`` (None: all) and, when ``categories`` is
    set, only entities with at least one of them."""

    entity_types: tuple[str, ...] | None = None
    categories: tuple[str, ...] | None = None

    @property
    def is_empty(self) -> bool:
        return self.entity_types is None and self.categories is None


@dataclass(frozen=True)
class EntityRows:
    """N entities to upsert: ``ids`` (N,), ``types`` (N,), ``categories`` (N,) tuples of str,
    ``revisions`` (N,) int64, ``vectors`` (N, D) float32."""

    ids: Sequence[str]
    types: Sequence[str]
    categories: Sequence[tuple[str, ...]]
    revisions: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, positions: Sequence[int]) -> EntityRows:
        pos = list(positions)
        return EntityRows(
            ids=[self.ids[i] for i in pos],
            types=[self.types[i] for i in pos],
            categories=[self.categories[i] for i in pos],
            revisions=self.revisions[pos],
            vectors=self.vectors[pos],
        )


@dataclass(frozen=True)
class Hits:
    """Top-k answers of Q queries: ``ids`` (Q, k) object array of entity ids (None past the last hit),
    ``scores`` (Q, k) float32 (-inf past the last hit)."""

    ids: np.ndarray
    scores: np.ndarray

    def row(self, q: int) -> list[tuple[str, float]]:
        return [(str(i), float(s)) for i, s in zip(self.ids[q], self.scores[q], strict=True) if i is not None]


@runtime_checkable
class VectorIndex(Protocol):
    """What deployment, loaders and serving need from an index (exact, HNSW, Qdrant...)."""

    dim: int

    def upsert(self, rows: EntityRows, *, write_chunk: int | None = None) -> int:
        """Adds or replaces entities whose revision is newer than the applied one; returns how many applied.
        ``write_chunk``: an in-process index writes that many rows at a time, letting searches in between
        (streaming writes into a serving version); None: all at once (a bulk load)."""
        ...

    def delete(self, ids: Sequence[str], revisions: Sequence[int]) -> int:
        """Removes entities (tombstones at ``revisions``); returns how many were removed."""
        ...

    def newer_rows(self, ids: Sequence[str], revisions: np.ndarray) -> list[int]:
        """Positions of the rows an upsert of them would apply now (see :meth:`RevisionBook.newer_rows`):
        what the version's other stores (features, lexical index) take in step with the index."""
        ...

    def current_rows(self, ids: Sequence[str], revisions: np.ndarray, *, deleted: bool = False) -> list[int]:
        """Positions of the rows that ARE the index's state now (see :meth:`RevisionBook.current_rows`): the
        version's other stores follow these, so that a write they missed (an attempt that failed between
        the index and them) is made when the change is applied again."""
        ...

    def search(self, queries: np.ndarray, k: int, where: EntityFilter | None = None) -> Hits:
        """Top-k entities by inner product for each of the (Q, D) queries, within the filter."""
        ...

    def __len__(self) -> int:
        """Number of live (not deleted) entities."""
        ...

    def revisions(self) -> dict[str, int]:
        """Live entity id -> applied revision."""
        ...

    def vectors_of(self, ids: Sequence[str]) -> np.ndarray:
        """(N, D) stored vectors of live entities (KeyError for unknown ids)."""
        ...

    def save(self, path: str | Path) -> None:
        """Persists the index into the (new, empty) folder ``path``."""
        ...

    def start_save(self, path: str | Path) -> Callable[[], None]:
        """:meth:`save` in two steps: captures the index as it is now (writes wait meanwhile, searches go
        on; cheap next to the save) and returns the function that finishes writing that capture into
        ``path``, which may run on another thread while writes go on (a loader's checkpoint)."""
        ...

    def close(self) -> None:
        """Frees what the index holds in this process."""
        ...

    def drop(self) -> None:
        """Destroys the index's stored data too (a retired version)."""
        ...


class RevisionBook:
    """Applied revision per entity id, tombstones included: the idempotence rule of every backend."""

    def __init__(self, applied: dict[str, int] | None = None, deleted: Iterable[str] = ()) -> None:
        self.applied: dict[str, int] = dict(applied or {})  # never loses an id (a delete is a tombstone)
        self.deleted: set[str] = set(deleted)
        self._saved_ids = GrowingStringPack()  # ``applied``'s ids as saved, encoded once each

    def newer(self, entity_id: str, revision: int) -> bool:
        return revision > self.applied.get(entity_id, -1)

    def newer_rows(self, ids: Sequence[str], revisions: np.ndarray) -> list[int]:
        """Positions of the rows to apply: newer than what is applied, and within the batch the highest
        revision of each id (ascending positions)."""
        applied = self.applied.get
        revs = revisions.tolist()
        if len(set(ids)) == len(ids):  # the usual batch (a bulk page): each id once, one look-up each
            return [i for i, (e, r) in enumerate(zip(ids, revs, strict=True)) if r > applied(e, -1)]
        latest: dict[str, int] = {}
        for i, (entity_id, revision) in enumerate(zip(ids, revs, strict=True)):
            if revision > applied(entity_id, -1) and (entity_id not in latest or revision > revs[latest[entity_id]]):
                latest[entity_id] = i
        return sorted(latest.values())

    def current_rows(self, ids: Sequence[str], revisions: np.ndarray, *, deleted: bool = False) -> list[int]:
        """Positions whose revision is the applied one of their id, an upsert's (``deleted=False``: the
        entity is live at it) or a delete's (``deleted=True``: its tombstone)."""
        applied, tombstones = self.applied.get, self.deleted
        return [
            i
            for i, (entity_id, revision) in enumerate(zip(ids, revisions.tolist(), strict=True))
            if applied(entity_id) == revision and (entity_id in tombstones) == deleted
        ]

    def record(self, entity_id: str, revision: int, *, deleted: bool) -> None:
        self.applied[entity_id] = int(revision)
        if deleted:
            self.deleted.add(entity_id)
        else:
            self.deleted.discard(entity_id)

    def record_live(self, ids: Sequence[str], revisions: Sequence[int]) -> None:
        """:meth:`record` of upserts (``deleted=False``) of distinct ids, at once."""
        self.applied.update(zip(ids, (int(r) for r in revisions), strict=True))
        if self.deleted:
            self.deleted.difference_update(ids)

    def live(self) -> dict[str, int]:
        return {e: r for e, r in self.applied.items() if e not in self.deleted}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The book as arrays for a checkpoint (call it with writes excluded)."""
        saved, n = self._saved_ids, len(self.applied)
        saved.extend(list(itertools.islice(self.applied, saved.count, None)))  # ids only ever join at the end
        return {
            "book_ids": saved.packed(),
            "book_revisions": np.fromiter(self.applied.values(), dtype=np.int64, count=n),
            "book_deleted": np.fromiter(map(self.deleted.__contains__, self.applied), dtype=np.bool_, count=n),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> RevisionBook:
        ids = unpack_strings(arrays["book_ids"])
        revisions = arrays["book_revisions"].tolist()
        deleted = arrays["book_deleted"].tolist()
        return cls(dict(zip(ids, revisions, strict=True)), (i for i, d in zip(ids, deleted, strict=True) if d))


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions and values of the k largest scores of each row of a (Q, N) matrix, best first."""
    k = min(k, scores.shape[1])
    if k == 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64), np.zeros((scores.shape[0], 0), dtype=np.float32)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def empty_hits(queries: int, k: int) -> Hits:
    return Hits(np.full((queries, k), None, dtype=object), np.full((queries, k), -np.inf, dtype=np.float32))
