"""The co-occurrence candidate source: item -> the items the same users responded to next to it.

Fitted offline on the training responses only (each user's responses in time order; every pair at most
``window`` positions apart counts once in each direction), and kept per entity as its ``top_n``
neighbours with their counts: a fixed-size table saved with the model version (arrays, no pickle).

A request proposes from its seeds: the entity it is about (related's source item) and the entities of its
history, most recent first. A neighbour's score is the sum over seeds of ``count / (1 + age)``, age 0 for
the source item and the most recent history entity: the recent past weighs more than the distant.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from monorec.artifacts import pack_strings, unpack_strings
from monorec.errors import ArtifactError

__all__ = ["CooccurrenceTable"]


class CooccurrenceTable:
    """Per entity: its ``top_n`` neighbours (ids) and their co-occurrence counts, strongest first.

    Attributes:
        vocab: (V,) entity ids the table knows.
        neighbours: (V, N) int32 rows of ``vocab`` (-1: no more neighbours).
        counts: (V, N) float32 co-occurrence counts.
    """

    def __init__(self, vocab: list[str], neighbours: np.ndarray, counts: np.ndarray, window: int) -> None:
        self.vocab, self.neighbours, self.counts, self.window = vocab, neighbours, counts, window
        self.row_of = {e: i for i, e in enumerate(vocab)}

    @classmethod
    def empty(cls) -> CooccurrenceTable:
        """A table that proposes nothing (a model saved before candidate sources)."""
        return cls([], np.full((0, 1), -1, dtype=np.int32), np.zeros((0, 1), dtype=np.float32), 0)

    @classmethod
    def fit(cls, responses: pl.DataFrame, *, window: int = 3, top_n: int = 100) -> CooccurrenceTable:
        """Counts co-occurrences in ``responses`` (``user_id``, ``ts``, ``entity_id``; one row per response;
        rows without a user are skipped)."""
        rows = (
            responses.filter(pl.col("user_id").is_not_null())
            .select("user_id", "ts", "entity_id")
            .unique(["user_id", "entity_id", "ts"])
            .sort(["user_id", "ts", "entity_id"])
        )
        pairs = []
        for offset in range(1, window + 1):
            later = pl.col("entity_id").shift(-offset).over("user_id")
            pairs.append(rows.select(pl.col("entity_id").alias("a"), later.alias("b")))
        both = pl.concat(pairs).drop_nulls().filter(pl.col("a") != pl.col("b"))
        both = pl.concat([both, both.select(pl.col("b").alias("a"), pl.col("a").alias("b"))])
        counts = (
            both.group_by(["a", "b"])
            .len()
            .sort(["a", "len", "b"], descending=[False, True, False])
            .group_by("a", maintain_order=True)
            .head(top_n)
        )
        vocab = sorted(set(counts["a"].to_list()) | set(counts["b"].to_list()))
        row_of = {e: i for i, e in enumerate(vocab)}
        neighbours = np.full((len(vocab), top_n), -1, dtype=np.int32)
        strengths = np.zeros((len(vocab), top_n), dtype=np.float32)
        a = np.array([row_of[e] for e in counts["a"].to_list()], dtype=np.int64)
        b = np.array([row_of[e] for e in counts["b"].to_list()], dtype=np.int64)
        # the rank of each pair within its ``a`` (rows are sorted by a, strongest first)
        starts = np.r_[0, np.flatnonzero(np.diff(a)) + 1]
        rank = np.arange(len(a)) - np.repeat(starts, np.diff(np.r_[starts, len(a)]))
        neighbours[a, rank] = b
        strengths[a, rank] = counts["len"].to_numpy()
        return cls(vocab, neighbours, strengths, window)

    def propose(self, seeds: Sequence[Sequence[str]], depth: int) -> list[list[tuple[str, float]]]:
        """Per request, its seeds most recent first -> up to ``depth`` (entity id, score), best first; a
        seed is never proposed for its own request."""
        out: list[list[tuple[str, float]]] = []
        for request in seeds:
            scores: dict[int, float] = defaultdict(float)
            rows = [self.row_of[s] for s in request if s in self.row_of]
            for age, row in enumerate(rows):
                valid = self.neighbours[row] >= 0
                for b, n in zip(self.neighbours[row][valid].tolist(), self.counts[row][valid].tolist(), strict=True):
                    scores[b] += n / (1.0 + age)
            for row in rows:
                scores.pop(row, None)
            best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:depth]
            out.append([(self.vocab[b], s) for b, s in best])
        return out

    def save(self, path: Path) -> None:
        np.savez(
            path,
            vocab=pack_strings(self.vocab),
            neighbours=self.neighbours,
            counts=self.counts,
            window=np.array(self.window),
        )

    @classmethod
    def load(cls, path: Path) -> CooccurrenceTable:
        try:
            with np.load(path, allow_pickle=False) as arrays:
                vocab = unpack_strings(arrays["vocab"])
                neighbours, counts, window = arrays["neighbours"], arrays["counts"], int(arrays["window"])
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{path}: co-occurrence table does not load: {exc}") from None
        if neighbours.shape != counts.shape or neighbours.shape[0] != len(vocab):
            raise ArtifactError(f"{path}: co-occurrence arrays disagree: {neighbours.shape}, {counts.shape}")
        return cls(vocab, neighbours.astype(np.int32), counts.astype(np.float32), window)
