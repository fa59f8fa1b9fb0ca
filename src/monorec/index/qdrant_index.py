"""The scale-out index: one Qdrant collection per model version, found by readers through an alias.

Works against a Qdrant server (``url``) or qdrant-client's local mode (``path``, no server; what the tests
use). Points are keyed by a UUID derived from the entity id and carry ``entity_id``, ``entity_type``,
``categories`` and ``revision`` in their payload; filters become Qdrant payload filters, so a filtered
search is exact about its filter. The revision book (tombstones included) is saved beside the collection.
"""

from __future__ import annotations

import atexit
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from monorec.errors import ArtifactError
from monorec.index.base import EntityFilter, EntityRows, Hits, RevisionBook, empty_hits

SPARSE_VECTOR = "lexical"  # the name of the points' sparse vector (monorec.retrieval.qdrant_lexical)

__all__ = ["QdrantIndex", "close_qdrant_client", "close_qdrant_clients", "qdrant_client_for"]

_CLIENTS: dict[str, QdrantClient] = {}
_CLIENTS_LOCK = threading.Lock()


def qdrant_client_for(location: str) -> QdrantClient:
    """One client per location in this process (local mode allows one client per folder)."""
    with _CLIENTS_LOCK:
        if location not in _CLIENTS:
            is_url = location.startswith(("http://", "https://"))
            _CLIENTS[location] = QdrantClient(url=location) if is_url else QdrantClient(path=location)
        return _CLIENTS[location]


def close_qdrant_client(location: str) -> None:
    """Closes this process's client of ``location`` if it has one (local mode: frees the folder for another
    process; a later :func:`qdrant_client_for` opens a new client)."""
    with _CLIENTS_LOCK:
        client = _CLIENTS.pop(location, None)
    if client is not None:
        client.close()


@atexit.register
def close_qdrant_clients() -> None:
    """Closes every client (local mode releases its folder lock)."""
    with _CLIENTS_LOCK:
        for client in _CLIENTS.values():
            client.close()
        _CLIENTS.clear()


def _point_id(entity_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"monorec:{entity_id}"))


class QdrantIndex:
    """A version's index as a Qdrant collection (see the module docstring)."""

    def __init__(self, dim: int, *, location: str, collection: str, create: bool = True) -> None:
        self.dim = dim
        self.location = location
        self.collection = collection
        self.client = qdrant_client_for(location)
        self.book = RevisionBook()
        self.writes = True  # False: a follower (see follow_only)
        self._lock = threading.Lock()
        if create and not self.client.collection_exists(collection):
            self.client.create_collection(
                collection,
                vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.DOT),
                # room for the version's lexical documents (monorec.retrieval.qdrant_lexical), used or not
                sparse_vectors_config={SPARSE_VECTOR: qm.SparseVectorParams(modifier=qm.Modifier.IDF)},
            )

    @staticmethod
    def point_id(entity_id: str) -> str:
        """The id of the entity's point."""
        return _point_id(entity_id)

    def follow_only(self) -> None:
        """Makes this object a follower of a collection that another process writes (a serving replica
        beside the deployment's owner): upserts and deletes keep the revision book in step with the change
        log, and write nothing to Qdrant."""
        self.writes = False

    def upsert(self, rows: EntityRows, *, write_chunk: int | None = None) -> int:
        del write_chunk  # Qdrant's server lets searches run beside its writes
        with self._lock:
            positions = self.book.newer_rows(rows.ids, rows.revisions)
            if not positions:
                return 0
            if not self.writes:
                for i in positions:
                    self.book.record(rows.ids[i], int(rows.revisions[i]), deleted=False)
                return len(positions)
            points = [
                qm.PointStruct(
                    id=_point_id(rows.ids[i]),
                    vector=rows.vectors[i].astype(np.float32).tolist(),
                    payload={
                        "entity_id": rows.ids[i],
                        "entity_type": rows.types[i],
                        "categories": list(rows.categories[i]),
                        "revision": int(rows.revisions[i]),
                    },
                )
                for i in positions
            ]
            self.client.upsert(self.collection, points=points, wait=True)
            for i in positions:
                self.book.record(rows.ids[i], int(rows.revisions[i]), deleted=False)
            return len(points)

    def newer_rows(self, ids: Sequence[str], revisions: np.ndarray) -> list[int]:
        with self._lock:
            return self.book.newer_rows(ids, revisions)

    def current_rows(self, ids: Sequence[str], revisions: np.ndarray, *, deleted: bool = False) -> list[int]:
        with self._lock:
            return self.book.current_rows(ids, revisions, deleted=deleted)

    def delete(self, ids: Sequence[str], revisions: Sequence[int]) -> int:
        with self._lock:
            newer = [(e, int(r)) for e, r in zip(ids, revisions, strict=True) if self.book.newer(e, int(r))]
            if not newer:
                return 0
            live_before = {e for e, _ in newer if e in self.book.applied and e not in self.book.deleted}
            if self.writes:
                selector = qm.PointIdsList(points=[_point_id(e) for e, _ in newer])
                self.client.delete(self.collection, points_selector=selector, wait=True)
            for entity_id, revision in newer:
                self.book.record(entity_id, revision, deleted=True)
            return sum(e in live_before for e, _ in {e: r for e, r in newer}.items())

    def search(self, queries: np.ndarray, k: int, where: EntityFilter | None = None) -> Hits:
        q = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        hits = empty_hits(len(q), k)
        if k <= 0:
            return hits
        must: list[Any] = []
        if where is not None and where.entity_types is not None:
            must.append(qm.FieldCondition(key="entity_type", match=qm.MatchAny(any=list(where.entity_types))))
        if where is not None and where.categories is not None:
            must.append(qm.FieldCondition(key="categories", match=qm.MatchAny(any=list(where.categories))))
        flt = qm.Filter(must=must) if must else None
        requests = [qm.QueryRequest(query=row.tolist(), limit=k, filter=flt, with_payload=True) for row in q]
        results = self.client.query_batch_points(self.collection, requests=requests)
        for r, response in enumerate(results):
            for c, point in enumerate(response.points):
                hits.ids[r, c] = (point.payload or {})["entity_id"]
                hits.scores[r, c] = point.score
        return hits

    def __len__(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def revisions(self) -> dict[str, int]:
        with self._lock:
            return self.book.live()

    def vectors_of(self, ids: Sequence[str]) -> np.ndarray:
        # the dense vector only (the unnamed one; a point may also carry the lexical sparse vector)
        points = self.client.retrieve(self.collection, ids=[_point_id(i) for i in ids], with_vectors=[""])
        by_id = {(p.payload or {})["entity_id"]: p.vector for p in points}
        return np.array([by_id[i] for i in ids], dtype=np.float32).reshape(len(ids), self.dim)

    def set_alias(self, alias: str) -> None:
        """Points ``alias`` at this collection in one atomic Qdrant operation (readers outside monorec)."""
        self.client.update_collection_aliases(
            change_aliases_operations=[
                qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=self.collection, alias_name=alias))
            ]
        )

    def save(self, path: str | Path) -> None:
        self.start_save(path)()

    def start_save(self, path: str | Path) -> Callable[[], None]:
        """The vectors live in the collection: a checkpoint keeps the revision book."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            arrays: dict[str, Any] = self.book.to_arrays()
        return lambda: np.savez(path / "revisions.npz", **arrays)

    @classmethod
    def load(cls, path: str | Path, dim: int, *, location: str, collection: str) -> QdrantIndex:
        index = cls(dim, location=location, collection=collection, create=False)
        if not index.client.collection_exists(collection):
            raise ArtifactError(f"{path}: Qdrant collection {collection!r} does not exist at {location}")
        try:
            with np.load(Path(path) / "revisions.npz", allow_pickle=False) as arrays:
                index.book = RevisionBook.from_arrays({k: arrays[k] for k in arrays.files})
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{path}: the revision book does not load: {exc}") from None
        return index

    def close(self) -> None:
        """Nothing to free in process: the collection lives in Qdrant (see :meth:`drop`)."""

    def drop(self) -> None:
        """Deletes the collection (a retired version frees its index); a follower leaves it to its writer."""
        if self.writes and self.client.collection_exists(self.collection):
            self.client.delete_collection(self.collection)
