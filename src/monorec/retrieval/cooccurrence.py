"""The co-occurrence candidate source: item -> the items the same users responded to next to it.

Fitted offline on the training responses only (each user's responses in time order; every pair at most
``window`` positions apart counts once in each direction), and kept per entity as its ``top_n``
neighbours with their counts: a fixed-size table saved with the model version (arrays, no pickle).

A request proposes from its seeds: the entity it is about (related's source item) and the entities of its
history, most recent first. A neighbour's score is the sum over seeds of ``count / (1 + age)``, age 0 for
the source item and the most recent history entity: the recent past weighs more than the distant.

Training the ranker on these scores needs them WITHOUT the row's own response: a training row's user
contributed to the very counts that would score its positive (their history item next to the item they
responded to), so a rare positive would always carry a co-occurrence the serving request never sees.
``fit(..., keep_own=True)`` keeps each user's own pair counts (in memory, never saved) and
``propose(..., users=...)`` subtracts them: leave-one-user-out counts, what the table would hold had that
user's responses been left out (the ``top_n`` cut of the full counts is kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from monorec.artifacts import pack_strings, unpack_strings
from monorec.errors import ArtifactError

__all__ = ["COOCCURRENCE_COLUMNS", "CooccurrenceTable", "ProposedRows"]

COOCCURRENCE_COLUMNS = ("user_id", "ts", "entity_id")  # what a fit reads of the responses

# (request index (M,), vocab row (M,), score (M,)): rows grouped by request in order, best first within one
ProposedRows = tuple[np.ndarray, np.ndarray, np.ndarray]

_CHUNK = 4096  # requests scored at once (bounds the (R, L, N) working arrays)


class CooccurrenceTable:
    """Per entity: its ``top_n`` neighbours (ids) and their co-occurrence counts, strongest first.

    Attributes:
        vocab: (V,) entity ids the table knows.
        neighbours: (V, N) int32 rows of ``vocab`` (-1: no more neighbours).
        counts: (V, N) float32 co-occurrence counts.
        own: each user's own pair counts (``fit(keep_own=True)`` only): user id -> code, and the sorted
            keys ``code * V^2 + a * V + b`` with their counts.
    """

    def __init__(self, vocab: list[str], neighbours: np.ndarray, counts: np.ndarray, window: int) -> None:
        self.vocab, self.neighbours, self.counts, self.window = vocab, neighbours, counts, window
        self.row_of = {e: i for i, e in enumerate(vocab)}
        self.own: tuple[dict[str, int], np.ndarray, np.ndarray] | None = None

    @classmethod
    def empty(cls) -> CooccurrenceTable:
        """A table that proposes nothing (a model saved before candidate sources)."""
        return cls([], np.full((0, 1), -1, dtype=np.int32), np.zeros((0, 1), dtype=np.float32), 0)

    @classmethod
    def fit(
        cls, responses: pl.DataFrame, *, window: int = 3, top_n: int = 100, keep_own: bool = False
    ) -> CooccurrenceTable:
        """Counts co-occurrences in ``responses`` (``user_id``, ``ts``, ``entity_id``; one row per response;
        rows without a user are skipped); ``keep_own`` also keeps each user's own counts (see the module)."""
        user, a, b, entities, users = _pairs(responses, window)
        n = len(entities)
        # counts and ranks on integer codes in numpy: at millions of responses the pairs are tens of
        # millions, whose group-bys (or Python strings) would cost gigabytes for a moment
        pair = a.astype(np.int64)
        pair *= n
        pair += b
        pair, count = _unique_counts(pair)
        pa, pb = pair // n, pair % n
        order = np.lexsort((pb, -count, pa))  # per a: strongest first, ties by id
        pa, pb, count = pa[order], pb[order], count[order]
        starts = np.r_[0, np.flatnonzero(np.diff(pa)) + 1]
        rank = np.arange(len(pa)) - np.repeat(starts, np.diff(np.r_[starts, len(pa)]))
        top = rank < top_n
        pa, pb, count, rank = pa[top], pb[top], count[top], rank[top]
        # pairs go both ways, so every entity with a neighbour is some pair's ``a``: the vocabulary, in id order
        kept = np.unique(pa)
        vocab = entities.gather(kept).to_list()
        row_of = np.full(n, -1, dtype=np.int64)
        row_of[kept] = np.arange(len(kept))
        neighbours = np.full((len(vocab), top_n), -1, dtype=np.int32)
        strengths = np.zeros((len(vocab), top_n), dtype=np.float32)
        neighbours[row_of[pa], rank] = row_of[pb]
        strengths[row_of[pa], rank] = count
        table = cls(vocab, neighbours, strengths, window)
        if keep_own:
            v = len(vocab)
            keys = user.astype(np.int64)  # ((user * v) + a's row) * v + b's row, built in place
            keys *= v
            keys += row_of[a]
            keys *= v
            keys += row_of[b]
            keys, own_counts = _unique_counts(keys)
            code = {u: i for i, u in enumerate(users.to_list())}
            table.own = (code, keys, own_counts.astype(np.float32))
        return table

    def seed_rows(self, seeds: Sequence[Sequence[str]]) -> np.ndarray:
        """Per request, its seeds most recent first -> (R, L) vocab rows, -1 for unknown ids and padding."""
        width = max((len(s) for s in seeds), default=0)
        out = np.full((len(seeds), max(width, 1)), -1, dtype=np.int64)
        for r, request in enumerate(seeds):
            rows = [self.row_of.get(s, -1) for s in request]
            out[r, : len(rows)] = rows
        return out

    def propose_rows(self, seeds: np.ndarray, depth: int, users: Sequence[str | None] | None = None) -> ProposedRows:
        """(R, L) seed rows (:meth:`seed_rows`; column = age) -> up to ``depth`` proposals per request, best
        first (ties by vocab row), never a seed of the request; ``users`` (R,) leaves each request's user's
        own counts out (needs ``fit(keep_own=True)``)."""
        parts = [self._propose_chunk(seeds[s : s + _CHUNK], depth, users, s) for s in range(0, len(seeds), _CHUNK)]
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0)
        return tuple(np.concatenate(x) for x in zip(*parts, strict=True))  # type: ignore[return-value]

    def _propose_chunk(
        self, seeds: np.ndarray, depth: int, users: Sequence[str | None] | None, first: int
    ) -> ProposedRows:
        r_count, length = seeds.shape
        v = len(self.vocab)
        known = seeds >= 0
        if v == 0 or not known.any():
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0)
        nbr = np.where(known[..., None], self.neighbours[seeds.clip(min=0)], -1).astype(np.int64)  # (R, L, N)
        cnt = np.where(nbr >= 0, self.counts[seeds.clip(min=0)], 0.0).astype(np.float64)
        if users is not None:
            if self.own is None:
                raise ValueError("leaving users' own counts out needs CooccurrenceTable.fit(keep_own=True)")
            code, keys, own_counts = self.own
            user = np.array(
                [code.get(u, -1) if u is not None else -1 for u in users[first : first + r_count]], dtype=np.int64
            )
            if len(keys):
                probe = (user[:, None, None] * v + seeds[..., None]) * v + nbr  # (R, L, N)
                at = np.searchsorted(keys, probe).clip(max=len(keys) - 1)
                hit = (nbr >= 0) & (user[:, None, None] >= 0) & (keys[at] == probe)
                cnt = cnt - np.where(hit, own_counts[at], 0.0)
        weight = cnt / (1.0 + np.arange(length))[None, :, None]
        request = np.broadcast_to(np.arange(r_count)[:, None, None], nbr.shape)
        keep = (nbr >= 0) & (cnt > 0)
        pair = request[keep] * v + nbr[keep]
        unique, inverse = np.unique(pair, return_inverse=True)
        score = np.bincount(inverse, weights=weight[keep], minlength=len(unique))
        seed_pairs = (np.broadcast_to(np.arange(r_count)[:, None], seeds.shape) * v + seeds)[known]
        keep_pair = ~np.isin(unique, seed_pairs)  # a seed is never proposed for its own request
        unique, score = unique[keep_pair], score[keep_pair]
        req, row = unique // v, unique % v
        order = np.lexsort((row, -score, req))  # per request: best first, ties by row
        req, row, score = req[order], row[order], score[order]
        starts = np.searchsorted(req, np.arange(r_count))
        rank = np.arange(len(req)) - starts[req]
        top = rank < depth
        return req[top] + first, row[top], score[top]

    def propose(
        self, seeds: Sequence[Sequence[str]], depth: int, users: Sequence[str | None] | None = None
    ) -> list[list[tuple[str, float]]]:
        """Per request, its seeds most recent first -> up to ``depth`` (entity id, score), best first; a
        seed is never proposed for its own request (``users``: see :meth:`propose_rows`)."""
        out: list[list[tuple[str, float]]] = [[] for _ in seeds]
        for r, row, score in zip(*self.propose_rows(self.seed_rows(seeds), depth, users), strict=True):
            out[int(r)].append((self.vocab[int(row)], float(score)))
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


def _unique_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_counts=True)``, sorting ``keys`` in place (np.unique sorts a copy: at
    millions of pairs each copy is tens of megabytes more at the fit's peak)."""
    keys.sort()
    if len(keys) == 0:
        return keys, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.diff(np.r_[starts, len(keys)])


def _pairs(responses: pl.DataFrame, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, pl.Series, pl.Series]:
    """Every co-occurring pair, both directions: each user's responses in time order (one per entity and
    time), pairs at most ``window`` positions apart, never an entity with itself (rows without a user are
    skipped). Returns (user (P,), a (P,), b (P,)) int64 positions in the returned sorted entity ids and
    sorted user ids (int32 codes)."""
    rows = (
        responses.filter(pl.col("user_id").is_not_null())
        .select("user_id", "ts", "entity_id")
        .unique(["user_id", "entity_id", "ts"])
    )
    entities = rows["entity_id"].unique().sort()
    users = rows["user_id"].unique().sort()
    coded = rows.select(  # a dense rank is the position among the sorted distinct ids
        (pl.col("user_id").rank("dense") - 1).alias("user"), "ts", (pl.col("entity_id").rank("dense") - 1).alias("e")
    ).sort(["user", "ts", "e"])
    # int32 codes (up to 2^31 users or entities): the pair arrays are the fit's largest, several per pair
    user, e = coded["user"].to_numpy().astype(np.int32), coded["e"].to_numpy().astype(np.int32)
    del rows, coded
    keep = [
        (user[offset:] == user[:-offset]) & (e[offset:] != e[:-offset]) for offset in range(1, window + 1)
    ]  # sorted by user: ``offset`` rows on, within the same user
    total = sum(int(k.sum()) for k in keep)
    out_user, out_a, out_b = (np.empty(2 * total, dtype=np.int32) for _ in range(3))
    at = 0
    for offset, same in enumerate(keep, start=1):  # written in place, both directions: no concatenations
        n = int(same.sum())
        for first, second, end in ((e[:-offset], e[offset:], at), (e[offset:], e[:-offset], at + total)):
            out_user[end : end + n] = user[:-offset][same]
            out_a[end : end + n] = first[same]
            out_b[end : end + n] = second[same]
        at += n
    return out_user, out_a, out_b, entities, users
