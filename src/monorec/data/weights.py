"""Per-sample loss weights, declared per canvas and objective in the config.

A canvas may weight its rows' losses, per objective (``watched``, ``rating``...) and for ``retrieval`` (the
retrieval softmax and the every-prefix history loss of its positive rows), by an expression over the row's
log columns written in polars' SQL dialect::

    [canvases.home]
    weights = { watched = "POWER(0.5, age_days / 180)", rating = "1 + LN(1 + watch_seconds)" }

``age_days`` is the row's age in days at the end of the training period (``first_valid_ts - ts``; the
validation and test rows, never trained on, have negative ages). The weights are computed once while the
labels are prepared, as one column per weighted task (:func:`weight_column`), so that the merged training
rows carry them like labels. A row whose expression is null (a missing log value) weighs 1 and is
counted; a negative or non-finite weight on a training row is a :class:`~monorec.errors.DataError`.

In the losses (:func:`monorec.models.losses.masked_objective_losses`) each task's loss is the weighted
mean ``sum(w * loss) / sum(w)`` over the rows where it is observed: the weights move the emphasis between
rows, not the loss's scale (which the learning rate and the task weights own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from monorec.errors import DataError
from monorec.weight_expressions import AGE_COLUMN, RETRIEVAL, parse_weight

if TYPE_CHECKING:
    from monorec.config import CanvasSpec, ProjectConfig

__all__ = [
    "AGE_COLUMN",
    "RETRIEVAL",
    "WeightStats",
    "add_sample_weights",
    "parse_weight",
    "weight_column",
    "weight_records",
    "weighted_tasks",
]

SECONDS_PER_DAY = 86_400


def weight_column(task: str) -> str:
    """The prepared rows' column holding a task's weight (``task``: an objective name or "retrieval")."""
    return f"weight_{task}"


def weighted_tasks(config: ProjectConfig) -> list[str]:
    """Every task some canvas weights, in a stable order (objectives in declaration order, then retrieval)."""
    keys = {key for c in config.canvases for key in c.weights}
    order = [o.name for o in config.objectives] + [RETRIEVAL]
    return [name for name in order if name in keys]


@dataclass(frozen=True)
class WeightStats:
    """What one batch of a canvas's rows says about a task's weights (summed over buckets)."""

    bad: int  # negative or non-finite weights on training rows
    nulls: int  # rows whose expression is null (weighed 1)
    train_sum: float
    train_rows: int

    def __add__(self, other: WeightStats) -> WeightStats:
        return WeightStats(
            self.bad + other.bad,
            self.nulls + other.nulls,
            self.train_sum + other.train_sum,
            self.train_rows + other.train_rows,
        )


def add_sample_weights(
    rows: pl.DataFrame, canvas: CanvasSpec, tasks: list[str], first_valid_ts: int
) -> tuple[pl.DataFrame, dict[str, WeightStats]]:
    """Adds ``weight_<task>`` (Float64) for every task in ``tasks``: the canvas's declared expression, or 1.

    Args:
        rows: one canvas's labelled rows, with ``ts``, ``split`` and the log columns the expressions read.
        canvas: the canvas (its ``weights``).
        tasks: the weighted tasks of the whole config (every canvas gets the same columns, so that the
            stratified merge can stack them).
        first_valid_ts: the end of the training period (``age_days`` is measured from it).

    Returns:
        (rows with the weight columns, each declared task's :class:`WeightStats`; see :func:`weight_records`).

    Raises:
        DataError: an expression reads a column the logs do not have.
    """
    where = f"canvases.{canvas.name}.weights"
    frame = rows.with_columns(((first_valid_ts - pl.col("ts")) / SECONDS_PER_DAY).alias(AGE_COLUMN))
    stats: dict[str, WeightStats] = {}
    columns: list[pl.Expr | pl.Series] = []
    train = frame["split"] == "train"
    for task in tasks:
        name = weight_column(task)
        if task not in canvas.weights:
            columns.append(pl.lit(1.0, dtype=pl.Float64).alias(name))
            continue
        expression = parse_weight(canvas.weights[task])
        missing = [c for c in expression.meta.root_names() if c not in frame.columns]
        if missing:
            raise DataError(
                where, f"{task}: {canvas.weights[task]!r} reads {missing}, which the logs do not have", column=task
            )
        values = frame.select(expression.cast(pl.Float64).alias(name))[name]
        in_train = values.filter(train)
        filled = values.fill_null(1.0)
        stats[task] = WeightStats(
            bad=int((in_train.is_nan() | in_train.is_infinite() | (in_train < 0)).sum()),
            nulls=int(values.is_null().sum()),
            train_sum=float(filled.filter(train).sum()),
            train_rows=int(train.sum()),
        )
        columns.append(filled.alias(name))
    return rows.with_columns(columns), stats


def weight_records(canvas: CanvasSpec, stats: dict[str, WeightStats]) -> dict[str, Any]:
    """A canvas's record of its declared weights (expression, training rows' mean, nulls weighed 1).

    Raises:
        DataError: a task's expression gives a negative or non-finite weight on training rows.
    """
    where = f"canvases.{canvas.name}.weights"
    record: dict[str, Any] = {}
    for task, st in stats.items():
        if st.bad:
            raise DataError(
                where,
                f"{task}: {canvas.weights[task]!r} gives a negative or non-finite weight on training rows",
                column=task,
                rows=st.bad,
            )
        mean = st.train_sum / st.train_rows if st.train_rows else None
        record[task] = {
            "expression": canvas.weights[task],
            "train_mean": None if mean is None or math.isnan(mean) else mean,
            "nulls_weighed_1": st.nulls,
        }
    return record
