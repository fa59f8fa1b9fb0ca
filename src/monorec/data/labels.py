"""Label preparation per canvas, and the time-based split.

For every canvas: drop rows about entities the catalogue does not know, drop bot users, dedupe repeated
impressions, enforce the unified context (sentinels + imputation), keep only the objectives the canvas
declares and the per-sample loss weights it declares (monorec.data.weights), split by time, and add
sampled negatives where the canvas asks for them.

The split is global and by time: every training row is older than every validation row, which is older
than every test row, so nothing from the future leaks into training.

Logs larger than memory: what needs the whole log (the split's cut-offs, the bots, counts) is computed as
aggregates, and everything else is per request, so the requests are prepared a bucket at a time
(:func:`label_plan`, run in memory or streamed by a :class:`~monorec.data.frame_engine.FrameEngine`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import polars as pl

from monorec.config import ProjectConfig
from monorec.data.frame_engine import FrameEngine, columns
from monorec.data.weights import WeightStats, add_sample_weights, weight_column, weight_records, weighted_tasks
from monorec.schema import ContextSchema

__all__ = [
    "SPLITS",
    "LabelPlan",
    "LabelSet",
    "add_sampled_negatives",
    "label_plan",
    "prepare_labels",
    "request_bucket",
    "responses",
    "time_cutoffs",
]

SPLITS = ("train", "valid", "test")
FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)
BUCKET_SEED = 0x6D6F6E6F  # the request buckets' hash seed: part of the prepared rows' order


@dataclass
class LabelSet:
    """Per-canvas labelled rows (each with a ``split`` column) and what cleaning removed."""

    canvases: dict[str, pl.DataFrame]
    cutoffs: tuple[int, int]  # (first valid ts, first test ts)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    # canvas -> weighted task -> {expression, train_mean, nulls_weighed_1} (monorec.data.weights)
    sample_weights: dict[str, dict[str, Any]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: {s: int((frame["split"] == s).sum()) for s in SPLITS} for name, frame in self.canvases.items()}


def responses(frame: FrameT, config: ProjectConfig) -> FrameT:
    """The rows whose canvas's primary objective is 1: the responses that mark relevant entities (and
    from which popularity, vocabularies and "seen" sets are counted)."""
    conditions = [
        (pl.col("canvas") == c.name) & (pl.col(config.objective(c.primary).column) == 1)
        for c in config.canvases
        if config.objective(c.primary).column in columns(frame)
    ]
    return frame.filter(pl.any_horizontal(conditions)) if conditions else frame.clear()


def time_cutoffs(
    logs: pl.LazyFrame, valid_fraction: float, test_fraction: float, engine: FrameEngine | None = None
) -> tuple[int, int]:
    """Timestamps where validation and test begin: quantiles of the event times (the value at position
    ``int(n * q)`` of the sorted times)."""
    engine = engine or FrameEngine()
    n = int(engine.collect(logs.select(pl.len())).item())
    if n == 0:
        return 0, 0
    at = [min(n - 1, int(n * (1 - valid_fraction - test_fraction))), min(n - 1, int(n * (1 - test_fraction)))]
    first_valid, first_test = engine.collect(logs.select(pl.col("ts").sort().gather(at)))["ts"].to_list()
    return int(first_valid), max(int(first_test), int(first_valid))


def _assign_split(frame: FrameT, cutoffs: tuple[int, int]) -> FrameT:
    first_valid, first_test = cutoffs
    return frame.with_columns(
        pl.when(pl.col("ts") < first_valid)
        .then(pl.lit("train"))
        .when(pl.col("ts") < first_test)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("test"))
        .alias("split")
    )


def _request_ids(frame: pl.LazyFrame, schema: ContextSchema) -> pl.LazyFrame:
    """Logs without ``request_id``: rows with the same time, canvas and context form one request."""
    names = columns(frame)
    key = [c for c in ("ts", "canvas", *schema.field_names) if c in names]
    generated = (
        pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in key], separator="\x1f").hash().cast(pl.String)
    )
    if "request_id" in names:
        generated = pl.coalesce(pl.col("request_id"), generated)
    return frame.with_columns(generated.alias("request_id"))


def _count_by_canvas(engine: FrameEngine, frame: pl.LazyFrame) -> dict[str, int]:
    return {str(c): int(n) for c, n in engine.collect(frame.group_by("canvas").len()).iter_rows()}


def _add(counts: dict[str, dict[str, int]], key: str, by_canvas: dict[str, int]) -> None:
    for name, n in by_canvas.items():
        if n:
            counts.setdefault(name, {})[key] = counts.get(name, {}).get(key, 0) + n


@dataclass
class LabelPlan:
    """The labelled rows of every canvas (see :func:`label_plan`) as lazy frames over what the engine
    kept (frames in memory, or Parquet when streaming), with what cleaning removed."""

    canvases: dict[str, pl.LazyFrame]
    cutoffs: tuple[int, int]
    dropped: dict[str, dict[str, int]]
    sample_weights: dict[str, dict[str, Any]]
    buckets: int = 1

    def collect(self) -> LabelSet:
        """The rows in memory."""
        frames = {name: frame.collect() for name, frame in self.canvases.items()}
        return LabelSet(frames, self.cutoffs, self.dropped, self.sample_weights)


def prepare_labels(logs: pl.DataFrame, catalogue: pl.DataFrame, config: ProjectConfig) -> LabelSet:
    """Cleans validated logs into per-canvas label sets with a time split, in memory (see :func:`label_plan`).

    Returns:
        A :class:`LabelSet`; each canvas frame has ``request_id, ts, canvas, task_type, entity_id``,
        every context field, every objective column (null where the canvas does not declare it) and
        ``split``.
    """
    return label_plan(logs.lazy(), catalogue, config, FrameEngine()).collect()


def request_bucket(buckets: int) -> pl.Expr:
    """The bucket of a row's request (rows of one request share it): a seeded hash of ``request_id``."""
    return pl.col("request_id").hash(seed=BUCKET_SEED) % buckets


def label_plan(logs: pl.LazyFrame, catalogue: pl.DataFrame, config: ProjectConfig, engine: FrameEngine) -> LabelPlan:
    """Label preparation of validated logs, a bucket of requests at a time.

    What the whole log decides comes first, each fact an aggregate over it (one pass each): the split's
    cut-offs, the bots, what is dropped. Then the rows are cut into ``ceil(rows / labels.bucket_rows)``
    buckets by a hash of their request; everything else is per request (duplicates, the unified context,
    weights, sampled negatives), so each bucket is prepared alone, in memory, and kept by the engine: the
    cleaned buckets first (their training responses weigh popularity negatives), then each canvas's
    labels. Memory holds one bucket, whether the logs were in memory or are streamed from Parquet.

    Args:
        logs: validated logs (see :func:`monorec.data.tables.validate_logs`).
        catalogue: validated catalogue.
        config: the project config (canvases, objectives, label and split knobs).
        engine: runs the plan (in memory or streaming).

    Returns:
        The canvases' rows, each canvas ordered by time within each bucket (by time when one bucket).
    """
    schema = ContextSchema.from_config(config)
    dropped: dict[str, dict[str, int]] = {c: {} for c in config.canvas_names}
    unknown_entity = ~pl.col("entity_id").is_in(catalogue["entity_id"].implode())
    _add(dropped, "unknown_entity", _count_by_canvas(engine, logs.filter(unknown_entity)))
    logs = logs.filter(~unknown_entity)

    # the split's cutoffs come first: everything learned while cleaning (who is a bot) is learned from
    # the training period only, like every other statistic (CONTRIBUTING rule 10)
    cutoffs = time_cutoffs(logs, config.split.valid_fraction, config.split.test_fraction, engine)
    if "user_id" in columns(logs):
        in_train = pl.col("user_id").is_not_null() & (pl.col("ts") < cutoffs[0])
        per_day = logs.filter(in_train).group_by(["user_id", pl.col("ts") // 86400]).len()
        over = per_day.filter(pl.col("len") > config.labels.max_events_per_user_per_day)
        bots = engine.collect(over.select(pl.col("user_id").unique()))["user_id"]
        is_bot = pl.col("user_id").is_in(bots.implode())
        _add(dropped, "bot_rows", _count_by_canvas(engine, logs.filter(is_bot)))
        logs = logs.filter(~is_bot)

    logs = _request_ids(logs, schema)
    rows = int(engine.collect(logs.select(pl.len())).item())
    buckets = max(1, -(-rows // config.labels.bucket_rows))
    cleaned: list[pl.LazyFrame] = []
    response_counts: dict[str, int] = {}
    pieces = engine.partition(logs, request_bucket(buckets), buckets, "requests", batch_rows=config.labels.bucket_rows)
    for b, piece in enumerate(pieces):
        bucket = engine.collect(piece)
        if config.labels.dedupe:
            before = dict(bucket.group_by("canvas").len().iter_rows())
            bucket = bucket.unique(subset=["request_id", "entity_id"], keep="last", maintain_order=True)
            after = dict(bucket.group_by("canvas").len().iter_rows())
            _add(dropped, "duplicates", {name: n - after.get(name, 0) for name, n in before.items()})
        bucket = schema.apply_to_frame(bucket, catalogue)
        if config.labels.negative_sampling != "uniform":
            for entity, n in _train_response_counts(bucket, config, cutoffs[0]).items():
                response_counts[entity] = response_counts.get(entity, 0) + n
        cleaned.append(engine.spill(bucket, f"logs-{b}"))
    weights = _negative_weights(response_counts, catalogue, config)

    keep = ["request_id", "ts", "canvas", "task_type", "entity_id", *schema.field_names]
    weighted = weighted_tasks(config)
    parts: dict[str, list[pl.LazyFrame]] = {c.name: [] for c in config.canvases}
    stats: dict[str, dict[str, WeightStats]] = {c.name: {} for c in config.canvases}
    for b, spilled in enumerate(cleaned):
        bucket = spilled.collect()
        names = bucket.columns
        for spec in config.canvases:
            frame = _assign_split(bucket.filter(pl.col("canvas") == spec.name), cutoffs)
            # computed from the full log rows (the expressions read log columns), then carried like labels;
            # sampled negatives inherit their positive's weights
            frame, bucket_stats = add_sample_weights(frame, spec, weighted, cutoffs[0])
            for task, st in bucket_stats.items():
                stats[spec.name][task] = stats[spec.name][task] + st if task in stats[spec.name] else st
            labels = [pl.col(weight_column(task)) for task in weighted]
            for o in config.objectives:
                if o.name in spec.objectives and o.column in names:
                    labels.append(pl.col(o.column).cast(pl.Float64).alias(o.column))
                else:
                    labels.append(pl.lit(None, dtype=pl.Float64).alias(o.column))
            frame = frame.select([*keep, *labels, "split"]).sort("ts", maintain_order=True)
            if spec.negatives:
                frame = add_sampled_negatives(
                    frame, catalogue, config, spec.name, seed=config.train.seed, weights=weights
                )
            parts[spec.name].append(engine.spill(frame, f"{spec.name}-{b}"))
    sample_weights = {spec.name: weight_records(spec, stats[spec.name]) for spec in config.canvases if stats[spec.name]}
    canvases = {name: pl.concat(frames) for name, frames in parts.items()}
    return LabelPlan(canvases, cutoffs, dropped, sample_weights, buckets)


def _train_response_counts(rows: pl.DataFrame, config: ProjectConfig, first_valid_ts: int) -> dict[str, int]:
    """entity id -> responses in the TRAINING period among ``rows``."""
    train = responses(rows.filter(pl.col("ts") < first_valid_ts), config)
    return {str(e): int(n) for e, n in train.group_by("entity_id").len().iter_rows()}


def _negative_weights(
    response_counts: dict[str, int], catalogue: pl.DataFrame, config: ProjectConfig
) -> np.ndarray | None:
    """Sampling weights over the catalogue for ``popularity`` negatives: (responses in TRAINING + 1) **
    exponent, so that validation and test never inform the sampling. None for uniform sampling."""
    if config.labels.negative_sampling == "uniform":
        return None
    w = (
        np.array([response_counts.get(e, 0) + 1.0 for e in catalogue["entity_id"].to_list()])
        ** config.labels.popularity_exponent
    )
    return w / w.sum()


def _draw_seed(seed: int, canvas: str) -> int:
    return (seed * 1_000_003 + sum(canvas.encode())) % (1 << 63)


def add_sampled_negatives(
    rows: pl.DataFrame,
    catalogue: pl.DataFrame,
    config: ProjectConfig,
    canvas: str,
    *,
    seed: int,
    weights: np.ndarray | None = None,
) -> pl.DataFrame:
    """Adds ``negatives`` sampled entities per positive row, with the positive's context and time
    (uniformly, or with ``weights`` (N_items,) summing to 1).

    Each draw is a seeded hash of the positive (its request, entity and time) and the draw's number, not
    a random generator's next value: the same positive gets the same negatives however the rows are cut
    into buckets. Binary objectives of a sampled negative are 0; regression objectives stay unobserved
    (null). The negative inherits its positive's ``ts`` and ``split``, so sampling cannot leak across the
    split.
    """
    spec = config.canvas(canvas)
    primary = config.objective(spec.primary).column
    positives = rows.filter(pl.col(primary) == 1)
    if positives.height == 0:
        return rows
    n_items = catalogue.height
    drawn = pl.concat(
        [positives.with_columns(pl.lit(k, dtype=pl.UInt32).alias("_draw")) for k in range(spec.negatives)]
    )
    hashed = pl.struct("request_id", "entity_id", "ts", "_draw").hash(seed=_draw_seed(seed, canvas))
    if weights is None:
        picks = (drawn.select(hashed)[:, 0] % n_items).to_numpy().astype(np.int64)
    else:
        uniform = (drawn.select(hashed // (1 << 11))[:, 0].to_numpy().astype(np.float64)) / float(1 << 53)
        picks = np.minimum(np.searchsorted(np.cumsum(weights), uniform, side="right"), n_items - 1)
    ids = catalogue["entity_id"].to_numpy()
    negatives = drawn.drop("_draw").with_columns(pl.Series("entity_id", ids[picks]))
    for o in config.objectives:
        value = 0.0 if (o.kind == "binary" and o.name in spec.objectives) else None
        negatives = negatives.with_columns(pl.lit(value, dtype=pl.Float64).alias(o.column))
    # a sampled "negative" that is in fact a logged positive of its request would be a false label: drop it
    negatives = negatives.join(
        positives.select("request_id", "entity_id"), on=["request_id", "entity_id"], how="anti", maintain_order="left"
    )
    return pl.concat([rows, negatives]).sort("ts", maintain_order=True)
