"""Label preparation per canvas, and the time-based split.

For every canvas: drop rows about entities the catalogue does not know, drop bot users, dedupe repeated
impressions, enforce the unified context (sentinels + imputation), keep only the objectives the canvas
declares and the per-sample loss weights it declares (monorec.data.weights), split by time, and add
sampled negatives where the canvas asks for them.

The split is global and by time: every training row is older than every validation row, which is older
than every test row, so nothing from the future leaks into training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import polars as pl

from monorec.config import ProjectConfig
from monorec.data.frame_engine import FrameEngine, columns
from monorec.data.weights import add_sample_weights, weight_column, weighted_tasks
from monorec.schema import ContextSchema

__all__ = [
    "SPLITS",
    "LabelPlan",
    "LabelSet",
    "add_sampled_negatives",
    "label_plan",
    "prepare_labels",
    "responses",
    "time_cutoffs",
]

SPLITS = ("train", "valid", "test")
FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)


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


def _assign_split(frame: pl.LazyFrame, cutoffs: tuple[int, int]) -> pl.LazyFrame:
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


@dataclass
class LabelPlan:
    """The labelled rows of every canvas as lazy frames (see :func:`label_plan`), with what cleaning
    removed; run by a :class:`~monorec.data.frame_engine.FrameEngine`."""

    canvases: dict[str, pl.LazyFrame]
    cutoffs: tuple[int, int]
    dropped: dict[str, dict[str, int]]
    sample_weights: dict[str, dict[str, Any]]

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


def label_plan(logs: pl.LazyFrame, catalogue: pl.DataFrame, config: ProjectConfig, engine: FrameEngine) -> LabelPlan:
    """The label preparation of validated logs as a plan: the small facts it needs (cut-offs, bots, what
    is dropped) are computed now, each as one pass over the logs; the cleaned logs are kept once by the
    engine (in memory, or as Parquet when streaming); every canvas's rows stay lazy.

    Args:
        logs: validated logs (see :func:`monorec.data.tables.validate_logs`).
        catalogue: validated catalogue.
        config: the project config (canvases, objectives, label and split knobs).
        engine: runs the plan (in memory or streaming).
    """
    schema = ContextSchema.from_config(config)
    dropped: dict[str, dict[str, int]] = {c: {} for c in config.canvas_names}
    unknown_entity = ~pl.col("entity_id").is_in(catalogue["entity_id"].implode())
    for name, n in _count_by_canvas(engine, logs.filter(unknown_entity)).items():
        dropped[name]["unknown_entity"] = n
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
        for name, n in _count_by_canvas(engine, logs.filter(is_bot)).items():
            dropped[name]["bot_rows"] = n
        logs = logs.filter(~is_bot)

    logs = _request_ids(logs, schema)
    if config.labels.dedupe:
        before = _count_by_canvas(engine, logs)
        logs = logs.unique(subset=["request_id", "entity_id"], keep="last", maintain_order=True)
    logs = engine.keep(schema.apply_to_frame(logs, catalogue), "logs")
    if config.labels.dedupe:
        after = _count_by_canvas(engine, logs)
        for name, n in before.items():
            if n - after.get(name, 0):
                dropped[name]["duplicates"] = n - after.get(name, 0)

    keep = ["request_id", "ts", "canvas", "task_type", "entity_id", *schema.field_names]
    weights = _negative_weights(logs, catalogue, config, cutoffs[0], engine)
    weighted = weighted_tasks(config)
    names = columns(logs)
    canvases: dict[str, pl.LazyFrame] = {}
    sample_weights: dict[str, dict[str, Any]] = {}
    for spec in config.canvases:
        rows = _assign_split(logs.filter(pl.col("canvas") == spec.name), cutoffs)
        # computed from the full log rows (the expressions read log columns), then carried like labels;
        # sampled negatives inherit their positive's weights
        rows, sample_weights[spec.name] = add_sample_weights(rows, spec, weighted, cutoffs[0], engine)
        labels = [pl.col(weight_column(task)) for task in weighted]
        for o in config.objectives:
            if o.name in spec.objectives and o.column in names:
                labels.append(pl.col(o.column).cast(pl.Float64).alias(o.column))
            else:
                labels.append(pl.lit(None, dtype=pl.Float64).alias(o.column))
        rows = rows.select([*keep, *labels, "split"]).sort("ts", maintain_order=True)
        if spec.negatives:
            rows = add_sampled_negatives(rows, catalogue, config, spec.name, seed=config.train.seed, weights=weights)
        canvases[spec.name] = rows
    used = {name: record for name, record in sample_weights.items() if record}
    return LabelPlan(canvases=canvases, cutoffs=cutoffs, dropped=dropped, sample_weights=used)


def _negative_weights(
    logs: pl.LazyFrame | pl.DataFrame,
    catalogue: pl.DataFrame,
    config: ProjectConfig,
    first_valid_ts: int,
    engine: FrameEngine | None = None,
) -> np.ndarray | None:
    """Sampling weights over the catalogue for ``popularity`` negatives: (responses in TRAINING + 1) **
    exponent, so that validation and test never inform the sampling. None for uniform sampling."""
    if config.labels.negative_sampling == "uniform":
        return None
    train = responses(logs.lazy().filter(pl.col("ts") < first_valid_ts), config)
    counts = dict((engine or FrameEngine()).collect(train.group_by("entity_id").len()).iter_rows())
    w = (
        np.array([counts.get(e, 0) + 1.0 for e in catalogue["entity_id"].to_list()])
        ** config.labels.popularity_exponent
    )
    return w / w.sum()


def _draw_seed(seed: int, canvas: str) -> int:
    return (seed * 1_000_003 + sum(canvas.encode())) % (1 << 63)


def add_sampled_negatives(
    rows: pl.LazyFrame,
    catalogue: pl.DataFrame,
    config: ProjectConfig,
    canvas: str,
    *,
    seed: int,
    weights: np.ndarray | None = None,
) -> pl.LazyFrame:
    """Adds ``negatives`` sampled entities per positive row, with the positive's context and time
    (uniformly, or with ``weights`` (N_items,) summing to 1).

    Each draw is a hash of (seed, the positive's position among the canvas's positives, the draw's
    number): the same rows get the same negatives whether the plan runs in memory or streams in batches.
    Binary objectives of a sampled negative are 0; regression objectives stay unobserved (null). The
    negative inherits its positive's ``ts`` and ``split``, so sampling cannot leak across the split.
    """
    spec = config.canvas(canvas)
    primary = config.objective(spec.primary).column
    positives = rows.filter(pl.col(primary) == 1)
    n_items = catalogue.height
    numbered = positives.with_row_index("_row")
    drawn = pl.concat(
        [numbered.with_columns(pl.lit(k, dtype=pl.UInt32).alias("_draw")) for k in range(spec.negatives)]
    ).with_columns(pl.struct("_row", "_draw").hash(seed=_draw_seed(seed, canvas)).alias("_hash"))
    if weights is None:
        pick = (pl.col("_hash") % n_items).cast(pl.Int64)
    else:
        cdf = np.cumsum(weights)
        uniform = (pl.col("_hash") // (1 << 11)).cast(pl.Float64) / float(1 << 53)  # [0, 1) from 53 bits
        pick = uniform.map_batches(
            lambda u: pl.Series(np.minimum(np.searchsorted(cdf, u.to_numpy(), side="right"), n_items - 1)),
            return_dtype=pl.Int64,
            is_elementwise=True,
        )
    table = pl.LazyFrame(
        {"_pick": np.arange(n_items, dtype=np.int64), "_negative": catalogue["entity_id"]},
    )
    objectives = [
        pl.lit(0.0 if (o.kind == "binary" and o.name in spec.objectives) else None, dtype=pl.Float64).alias(o.column)
        for o in config.objectives
    ]
    negatives = (
        drawn.with_columns(pick.alias("_pick"))
        .join(table, on="_pick", how="left", maintain_order="left")
        .with_columns(pl.col("_negative").alias("entity_id"), *objectives)
        .drop("_row", "_draw", "_hash", "_pick", "_negative")
    )
    # a sampled "negative" that is in fact the logged positive would be a false label: drop it
    negatives = negatives.join(
        positives.select("request_id", "entity_id"), on=["request_id", "entity_id"], how="anti", maintain_order="left"
    )
    return pl.concat([rows, negatives]).sort("ts", maintain_order=True)
