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
from typing import Any

import numpy as np
import polars as pl

from monorec.config import ProjectConfig
from monorec.data.weights import add_sample_weights, weight_column, weighted_tasks
from monorec.schema import ContextSchema

__all__ = ["SPLITS", "LabelSet", "add_sampled_negatives", "prepare_labels", "responses", "time_cutoffs"]

SPLITS = ("train", "valid", "test")


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


def responses(frame: pl.DataFrame, config: ProjectConfig) -> pl.DataFrame:
    """The rows whose canvas's primary objective is 1: the responses that mark relevant entities (and
    from which popularity, vocabularies and "seen" sets are counted)."""
    conditions = [
        (pl.col("canvas") == c.name) & (pl.col(config.objective(c.primary).column) == 1)
        for c in config.canvases
        if config.objective(c.primary).column in frame.columns
    ]
    return frame.filter(pl.any_horizontal(conditions)) if conditions else frame.clear()


def time_cutoffs(ts: pl.Series, valid_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Timestamps where validation and test begin: quantiles of the event times."""
    values = np.sort(ts.to_numpy())
    first_valid = int(values[min(len(values) - 1, int(len(values) * (1 - valid_fraction - test_fraction)))])
    first_test = int(values[min(len(values) - 1, int(len(values) * (1 - test_fraction)))])
    return first_valid, max(first_test, first_valid)


def _assign_split(frame: pl.DataFrame, cutoffs: tuple[int, int]) -> pl.DataFrame:
    first_valid, first_test = cutoffs
    return frame.with_columns(
        pl.when(pl.col("ts") < first_valid)
        .then(pl.lit("train"))
        .when(pl.col("ts") < first_test)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("test"))
        .alias("split")
    )


def _request_ids(frame: pl.DataFrame, schema: ContextSchema) -> pl.DataFrame:
    """Logs without ``request_id``: rows with the same time, canvas and context form one request."""
    if "request_id" in frame.columns and frame["request_id"].null_count() == 0:
        return frame
    key = [c for c in ("ts", "canvas", *schema.field_names) if c in frame.columns]
    generated = (
        pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in key], separator="\x1f").hash().cast(pl.String)
    )
    if "request_id" in frame.columns:
        generated = pl.coalesce(pl.col("request_id"), generated)
    return frame.with_columns(generated.alias("request_id"))


def prepare_labels(logs: pl.DataFrame, catalogue: pl.DataFrame, config: ProjectConfig) -> LabelSet:
    """Cleans validated logs into per-canvas label sets with a time split.

    Args:
        logs: validated logs (see :func:`monorec.data.tables.validate_logs`).
        catalogue: validated catalogue.
        config: the project config (canvases, objectives, label and split knobs).

    Returns:
        A :class:`LabelSet`; each canvas frame has ``request_id, ts, canvas, task_type, entity_id``,
        every context field, every objective column (null where the canvas does not declare it) and
        ``split``.
    """
    schema = ContextSchema.from_config(config)
    dropped: dict[str, dict[str, int]] = {c: {} for c in config.canvas_names}
    known = pl.Series(catalogue["entity_id"])
    unknown_entity = ~pl.col("entity_id").is_in(known.implode())
    for name, n in logs.filter(unknown_entity).group_by("canvas").len().iter_rows():
        dropped[name]["unknown_entity"] = int(n)
    logs = logs.filter(~unknown_entity)

    # the split's cutoffs come first: everything learned while cleaning (who is a bot) is learned from
    # the training period only, like every other statistic (CONTRIBUTING rule 10)
    cutoffs = time_cutoffs(logs["ts"], config.split.valid_fraction, config.split.test_fraction)
    if "user_id" in logs.columns:
        in_train = pl.col("user_id").is_not_null() & (pl.col("ts") < cutoffs[0])
        per_day = logs.filter(in_train).group_by(["user_id", pl.col("ts") // 86400]).len()
        bots = per_day.filter(pl.col("len") > config.labels.max_events_per_user_per_day)["user_id"].unique()
        is_bot = pl.col("user_id").is_in(bots.implode())
        for name, n in logs.filter(is_bot).group_by("canvas").len().iter_rows():
            dropped[name]["bot_rows"] = int(n)
        logs = logs.filter(~is_bot)

    logs = _request_ids(logs, schema)
    if config.labels.dedupe:
        before = logs.group_by("canvas").len()
        logs = logs.unique(subset=["request_id", "entity_id"], keep="last", maintain_order=True)
        after = dict(logs.group_by("canvas").len().iter_rows())
        for name, n in before.iter_rows():
            if n - after.get(name, 0):
                dropped[name]["duplicates"] = int(n - after.get(name, 0))

    logs = schema.apply_to_frame(logs, catalogue)
    columns = ["request_id", "ts", "canvas", "task_type", "entity_id", *schema.field_names]
    weights = _negative_weights(logs, catalogue, config, cutoffs[0])
    weighted = weighted_tasks(config)
    canvases: dict[str, pl.DataFrame] = {}
    sample_weights: dict[str, dict[str, Any]] = {}
    for spec in config.canvases:
        rows = _assign_split(logs.filter(pl.col("canvas") == spec.name), cutoffs)
        # computed from the full log rows (the expressions read log columns), then carried like labels;
        # sampled negatives inherit their positive's weights
        rows, sample_weights[spec.name] = add_sample_weights(rows, spec, weighted, cutoffs[0])
        labels = [pl.col(weight_column(task)) for task in weighted]
        for o in config.objectives:
            if o.name in spec.objectives and o.column in rows.columns:
                labels.append(pl.col(o.column).cast(pl.Float64).alias(o.column))
            else:
                labels.append(pl.lit(None, dtype=pl.Float64).alias(o.column))
        rows = rows.select([*columns, *labels, "split"]).sort("ts", maintain_order=True)
        if spec.negatives:
            rows = add_sampled_negatives(rows, catalogue, config, spec.name, seed=config.train.seed, weights=weights)
        canvases[spec.name] = rows
    used = {name: record for name, record in sample_weights.items() if record}
    return LabelSet(canvases=canvases, cutoffs=cutoffs, dropped=dropped, sample_weights=used)


def _negative_weights(
    logs: pl.DataFrame, catalogue: pl.DataFrame, config: ProjectConfig, first_valid_ts: int
) -> np.ndarray | None:
    """Sampling weights over the catalogue for ``popularity`` negatives: (responses in TRAINING + 1) **
    exponent, so that validation and test never inform the sampling. None for uniform sampling."""
    if config.labels.negative_sampling == "uniform":
        return None
    train = responses(logs.filter(pl.col("ts") < first_valid_ts), config)
    counts = dict(train["entity_id"].value_counts().iter_rows())
    w = (
        np.array([counts.get(e, 0) + 1.0 for e in catalogue["entity_id"].to_list()])
        ** config.labels.popularity_exponent
    )
    return w / w.sum()


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

    Binary objectives of a sampled negative are 0; regression objectives stay unobserved (null). The
    negative inherits its positive's ``ts`` and ``split``, so sampling cannot leak across the split.
    """
    spec = config.canvas(canvas)
    primary = config.objective(spec.primary).column
    positives = rows.filter(pl.col(primary) == 1)
    if positives.height == 0:
        return rows
    rng = np.random.default_rng([seed, sum(canvas.encode())])
    ids = catalogue["entity_id"].to_numpy()
    n = positives.height * spec.negatives
    picks = rng.integers(0, len(ids), n) if weights is None else rng.choice(len(ids), size=n, p=weights)
    negatives = pl.concat([positives] * spec.negatives).with_columns(pl.Series("entity_id", ids[picks]))
    for o in config.objectives:
        value = 0.0 if (o.kind == "binary" and o.name in spec.objectives) else None
        negatives = negatives.with_columns(pl.lit(value, dtype=pl.Float64).alias(o.column))
    # a sampled "negative" that is in fact the logged positive would be a false label: drop it
    negatives = negatives.join(positives.select("request_id", "entity_id"), on=["request_id", "entity_id"], how="anti")
    return pl.concat([rows, negatives]).sort("ts", maintain_order=True)
