"""Evaluation requests: one per logged request with at least one relevant entity."""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

__all__ = ["RequestSet", "build_requests", "entity_positions", "seen_by_user"]


@dataclass
class RequestSet:
    """R requests of one canvas.

    Attributes:
        canvas: the canvas.
        contexts: (R rows) the unified context of each request (+ ``task_type``).
        relevant: R arrays of catalogue positions the user responded to (primary objective = 1), minus the
            excluded ones (a request left with no target is not evaluated).
        exclude: R arrays of catalogue positions that must not be recommended (seen, the source item),
            whatever the labels say.
        cold: (R,) True where the request's user never appears in training (the cold-start slice).
    """

    canvas: str
    contexts: pl.DataFrame
    relevant: list[np.ndarray]
    exclude: list[np.ndarray]
    cold: np.ndarray

    def __len__(self) -> int:
        return self.contexts.height

    @functools.cached_property
    def _fingerprint(self) -> str:
        from monorec.evaluation.compare import request_fingerprint

        return request_fingerprint(self.contexts.write_csv().encode("utf-8"), self.relevant, self.exclude)

    def fingerprint(self) -> str:
        """What makes two evaluations comparable request by request: contexts, targets and exclusions
        (hashed once: every recommender evaluated on the set asks for it)."""
        return self._fingerprint


def entity_positions(catalogue: pl.DataFrame, ids: pl.Series) -> np.ndarray:
    """Catalogue row positions of entity ids (-1 for ids not in the catalogue)."""
    return (
        ids.replace_strict(
            catalogue["entity_id"], pl.int_range(catalogue.height, eager=True), default=-1, return_dtype=pl.Int64
        )
        .to_numpy()
        .astype(np.int64)
    )


def seen_by_user(
    train_positives: pl.DataFrame, catalogue: pl.DataFrame, users: Collection[str] | None = None
) -> dict[str, np.ndarray]:
    """user_id -> catalogue positions of the entities the user responded to in training (of ``users``
    only, when given: the users of the requests to build; every user of a large log costs memory).

    The arrays are slices of one array of positions (no Python list per user): at 50x the demo's logs
    the per-user lists of every training user were ~160 MB of the training process's peak."""
    if "user_id" not in train_positives.columns:
        return {}
    rows = train_positives.lazy().filter(pl.col("user_id").is_not_null())
    if users is not None:
        rows = rows.filter(pl.col("user_id").is_in(pl.Series(list(users), dtype=pl.String)))
    pairs = rows.select("user_id", "entity_id").unique().sort("user_id").collect()
    if pairs.height == 0:
        return {}
    positions = entity_positions(catalogue, pairs["entity_id"])
    ids = pairs["user_id"]
    starts = np.flatnonzero(np.r_[True, (ids.slice(1) != ids.slice(0, len(ids) - 1)).to_numpy()])
    ends = np.r_[starts[1:], len(ids)]
    return {str(ids[int(a)]): positions[a:b] for a, b in zip(starts, ends, strict=True)}


def build_requests(
    rows: pl.DataFrame,
    catalogue: pl.DataFrame,
    *,
    canvas: str,
    primary_column: str,
    context_columns: list[str],
    seen: Mapping[str, np.ndarray] | None = None,
    exclude_source_field: str | None = None,
    known_users: set[str] | None = None,
    max_requests: int = 0,
    seed: int = 0,
) -> RequestSet:
    """Groups one canvas's rows into requests with their relevant entities.

    Args:
        rows: rows of one canvas and one split (logged and sampled).
        catalogue: the catalogue whose row positions are the entity ids used everywhere in evaluation.
        primary_column: the label that marks a relevant entity.
        context_columns: the unified context fields to keep.
        seen: user_id -> positions to exclude (entities seen in training); None: exclude nothing.
        exclude_source_field: a context field naming an entity to exclude (e.g. the source item).
        known_users: users seen in training; the others form the cold-start slice (None: no slice).
        max_requests: keep a seeded sample of this many requests (0: all).
    """
    positives = rows.filter(pl.col(primary_column) == 1)
    grouped = (
        positives.group_by("request_id", maintain_order=True)
        .agg(pl.col(c).first() for c in [*context_columns, "task_type", "ts"])
        .join(
            positives.group_by("request_id", maintain_order=True).agg(pl.col("entity_id").alias("_relevant")),
            on="request_id",
        )
        .sort(["ts", "request_id"])
    )
    if max_requests and grouped.height > max_requests:
        grouped = grouped.sample(n=max_requests, seed=seed).sort(["ts", "request_id"])
    relevant = [entity_positions(catalogue, pl.Series(ids, dtype=pl.String)) for ids in grouped["_relevant"].to_list()]
    relevant = [r[r >= 0] for r in relevant]
    exclude: list[np.ndarray] = []
    users = grouped["user_id"].to_list() if "user_id" in grouped.columns else [None] * grouped.height
    sources = (
        entity_positions(catalogue, grouped[exclude_source_field].cast(pl.String))
        if exclude_source_field and exclude_source_field in grouped.columns
        else np.full(grouped.height, -1)
    )
    empty = np.zeros(0, dtype=np.int64)
    kept_relevant: list[np.ndarray] = []
    for user, source, rel in zip(users, sources, relevant, strict=True):
        ex = seen.get(user, empty) if (seen is not None and user is not None) else empty
        if source >= 0:
            ex = np.append(ex, source)
        # what is excluded never depends on the label: an excluded entity is no longer a target either
        # (keeping the seen entities that happen to be relevant now would tell every recommender which
        # of the seen ones to answer)
        exclude.append(ex)
        kept_relevant.append(np.setdiff1d(rel, ex))
    keep = np.array([len(r) > 0 for r in kept_relevant], dtype=bool)  # requests with a target left
    cold = np.array([known_users is not None and (u is None or u not in known_users) for u in users], dtype=bool)
    kept = np.flatnonzero(keep).tolist()
    contexts = grouped.select([*context_columns, "task_type"]).filter(pl.Series(keep))
    return RequestSet(canvas, contexts, [kept_relevant[i] for i in kept], [exclude[i] for i in kept], cold[keep])
