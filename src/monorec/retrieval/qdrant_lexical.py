"""The scale-out lexical source: BM25 as Qdrant sparse vectors, in the version's own collection.

Each entity's point in the version's collection (see :mod:`monorec.index.qdrant_index`) carries, beside
its dense embedding, a sparse vector named ``lexical``: one dimension per (field, term) of its title and
categories, cut by the same analyzer as the tantivy index, valued by BM25's term-frequency part

    tf * (k1 + 1) / (tf + k1 * (1 - b + b * field_length / average_field_length))

Qdrant supplies the other part: the collection's ``IDF`` modifier multiplies each dimension of a query by
its inverse document frequency over the collection, ln(1 + (N - n + 0.5) / (n + 0.5)), as Lucene and
tantivy do. A query is a 0/1 vector over its terms in both fields, so a score is BM25 summed over the two
fields, as in :class:`~monorec.retrieval.lexical.LexicalIndex`. The average field lengths are fixed when
the version's lexical index is created (from the catalogue at that time) and saved in its checkpoint:
a stored weight never changes when later documents move the average.

A document lives and dies with its point: the vector index writes the point (its dense vector), this
source then adds the sparse one, and the index's delete removes both.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from qdrant_client import models as qm

from monorec.errors import ArtifactError
from monorec.index.qdrant_index import SPARSE_VECTOR, QdrantIndex
from monorec.retrieval.lexical import TEXT_FIELDS, analyzer

__all__ = ["QdrantLexical", "average_lengths"]

K1, B = 1.2, 0.75  # BM25's constants, tantivy's and Lucene's defaults
_SAVED = "qdrant_lexical.json"


def _dimension(field: str, term: str) -> int:
    """(field, term) -> a sparse dimension (crc32: stable across processes; a collision merges two terms)."""
    return zlib.crc32(f"{field}\x00{term}".encode())


def _field_texts(title: str | None, categories: str | None) -> dict[str, str]:
    return {"title": title or "", "categories": (categories or "").replace("|", " ")}


def average_lengths(titles: Iterable[str | None], categories: Iterable[str | None]) -> dict[str, float]:
    """Mean tokens per field over the given documents (1.0 for a field without any)."""
    tokenize = analyzer()
    totals, count = Counter[str](), 0
    for title, cats in zip(titles, categories, strict=True):
        count += 1
        for field, text in _field_texts(title, cats).items():
            totals[field] += len(tokenize.analyze(text))
    return {f: (totals[f] / count if count and totals[f] else 1.0) for f in TEXT_FIELDS}


class QdrantLexical:
    """BM25 over entities' text as sparse vectors of a :class:`QdrantIndex`'s points (module docstring)."""

    def __init__(self, index: QdrantIndex, average: dict[str, float]) -> None:
        self.index, self.average = index, dict(average)
        self._analyzer = analyzer()

    def _sparse(self, title: str | None, categories: str | None) -> qm.SparseVector:
        weights: dict[int, float] = {}
        for field, text in _field_texts(title, categories).items():
            tokens = self._analyzer.analyze(text)
            norm = K1 * (1 - B + B * len(tokens) / self.average[field])
            for term, tf in Counter(tokens).items():
                dim = _dimension(field, term)
                weights[dim] = weights.get(dim, 0.0) + tf * (K1 + 1) / (tf + norm)
        return qm.SparseVector(indices=list(weights), values=list(weights.values()))

    def upsert(
        self,
        ids: Sequence[str],
        titles: Sequence[str | None],
        categories: Sequence[str | None],
        *,
        commit: bool = True,
    ) -> None:
        """Adds the sparse vectors to the entities' points, which the vector index wrote first (Qdrant
        applies the update at once: ``commit`` has nothing to wait for). A follower of the collection
        (``QdrantIndex.follow_only``) leaves the writing to the collection's writer."""
        if not ids or not self.index.writes:
            return
        points = [
            qm.PointVectors(id=self.index.point_id(e), vector={SPARSE_VECTOR: self._sparse(t, c)})
            for e, t, c in zip(ids, titles, categories, strict=True)
        ]
        self.index.client.update_vectors(self.index.collection, points=points, wait=True)

    def delete(self, ids: Sequence[str], *, commit: bool = True) -> None:
        """Nothing to do: the vector index's delete removed the points, sparse vectors included."""

    def commit(self) -> None:
        """Nothing to do (every write is applied when it returns)."""

    def __len__(self) -> int:
        has_text = qm.Filter(must=[qm.HasVectorCondition(has_vector=SPARSE_VECTOR)])
        return int(self.index.client.count(self.index.collection, count_filter=has_text, exact=True).count)

    def holds(self, entity_id: str) -> bool:
        points = self.index.client.retrieve(
            self.index.collection, ids=[self.index.point_id(entity_id)], with_vectors=[SPARSE_VECTOR]
        )
        return bool(points) and SPARSE_VECTOR in (points[0].vector or {})

    def ids(self) -> set[str]:
        """Every entity id whose point has a sparse vector."""
        has_text = qm.Filter(must=[qm.HasVectorCondition(has_vector=SPARSE_VECTOR)])
        out: set[str] = set()
        offset = None
        while True:
            points, offset = self.index.client.scroll(
                self.index.collection, scroll_filter=has_text, limit=10_000, offset=offset, with_payload=["entity_id"]
            )
            out.update(str((p.payload or {})["entity_id"]) for p in points)
            if offset is None:
                return out

    def terms(self, text: str) -> list[str]:
        return list(dict.fromkeys(self._analyzer.analyze(text)))

    def search(self, texts: Sequence[str | None], depth: int) -> list[list[tuple[str, float]]]:
        """Per text: up to ``depth`` (entity id, BM25 score), best first; nothing for an empty text."""
        out: list[list[tuple[str, float]]] = [[] for _ in texts]
        asked, requests = [], []
        for i, text in enumerate(texts):
            terms = self.terms(text) if text else []
            if not terms or depth <= 0:
                continue
            dims = sorted({_dimension(field, term) for term in terms for field in TEXT_FIELDS})
            query = qm.SparseVector(indices=dims, values=[1.0] * len(dims))
            requests.append(qm.QueryRequest(query=query, using=SPARSE_VECTOR, limit=depth, with_payload=["entity_id"]))
            asked.append(i)
        if requests:
            responses = self.index.client.query_batch_points(self.index.collection, requests=requests)
            for i, response in zip(asked, responses, strict=True):
                out[i] = [((p.payload or {})["entity_id"], float(p.score)) for p in response.points]
        return out

    def save(self, folder: str | Path) -> None:
        """The documents live in the collection; the checkpoint keeps what their weights were computed
        with (the average field lengths)."""
        Path(folder).mkdir(parents=True)
        (Path(folder) / _SAVED).write_text(json.dumps({"average": self.average}))

    @classmethod
    def restore(cls, saved: str | Path, index: QdrantIndex) -> QdrantLexical:
        """The source over ``index``'s collection, with the average lengths saved by :meth:`save`.

        Raises:
            ArtifactError: ``saved`` holds no such record.
        """
        try:
            saved_average = json.loads((Path(saved) / _SAVED).read_text())["average"]
            average = {f: float(saved_average[f]) for f in TEXT_FIELDS}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{saved}: lexical index missing ({exc!r})") from None
        return cls(index, average)

    def close(self) -> None:
        """Nothing to free: the collection belongs to the vector index."""
