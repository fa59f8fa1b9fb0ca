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

from typing import TYPE_CHECKING, Any

import polars as pl

from monorec.data.frame_engine import FrameEngine, columns
from monorec.errors import DataError
from monorec.weight_expressions import AGE_COLUMN, RETRIEVAL, parse_weight

if TYPE_CHECKING:
    from monorec.config import CanvasSpec, ProjectConfig

__all__ = ["AGE_COLUMN", "RETRIEVAL", "add_sample_weights", "parse_weight", "weight_column", "weighted_tasks"]

SECONDS_PER_DAY = 86_400


def weight_column(task: str) -> str:
    """The prepared rows' column holding a task's weight (``task``: an objective name or "retrieval")."""
    return f"weight_{task}"


def weighted_tasks(config: ProjectConfig) -> list[str]:
    """Every task some canvas weights, in a stable order (objectives in declaration order, then retrieval)."""
    keys = {key for c in config.canvases for key in c.weights}
    order = [o.name for o in config.objectives] + [RETRIEVAL]
    return [name for name in order if name in keys]


def add_sample_weights(
    rows: pl.LazyFrame, canvas: CanvasSpec, tasks: list[str], first_valid_ts: int, engine: FrameEngine
) -> tuple[pl.LazyFrame, dict[str, Any]]:
    """Adds ``weight_<task>`` (Float64) for every task in ``tasks``: the canvas's declared expression, or 1.

    Args:
        rows: one canvas's labelled rows, with ``ts``, ``split`` and the log columns the expressions read.
        canvas: the canvas (its ``weights``).
        tasks: the weighted tasks of the whole config (every canvas gets the same columns, so that the
            stratified merge can stack them).
        first_valid_ts: the end of the training period (``age_days`` is measured from it).
        engine: runs the one pass that checks the weights and records their means.

    Returns:
        (rows with the weight columns, a record per declared task: expression, training rows' mean, nulls).

    Raises:
        DataError: an expression reads a column the logs do not have, or gives a negative or non-finite
            weight on a training row.
    """
    where = f"canvases.{canvas.name}.weights"
    names = columns(rows)
    declared: dict[str, pl.Expr] = {}
    for task in tasks:
        if task not in canvas.weights:
            continue
        expression = parse_weight(canvas.weights[task])
        missing = [c for c in expression.meta.root_names() if c not in [*names, AGE_COLUMN]]
        if missing:
            raise DataError(
                where, f"{task}: {canvas.weights[task]!r} reads {missing}, which the logs do not have", column=task
            )
        declared[task] = expression.cast(pl.Float64)
    weighted = rows.with_columns(((first_valid_ts - pl.col("ts")) / SECONDS_PER_DAY).alias(AGE_COLUMN)).with_columns(
        *(value.alias(weight_column(task)) for task, value in declared.items()),
        *(pl.lit(1.0, dtype=pl.Float64).alias(weight_column(t)) for t in tasks if t not in declared),
    )
    record: dict[str, Any] = {}
    if declared:
        train = pl.col("split") == "train"
        checks = engine.collect(
            weighted.select(
                pl.len().alias("rows"),
                *(
                    expr
                    for task in declared
                    for value in [pl.col(weight_column(task))]
                    for expr in (
                        (value.is_nan() | value.is_infinite() | (value < 0)).filter(train).sum().alias(f"bad:{task}"),
                        value.is_null().sum().alias(f"nulls:{task}"),
                        value.fill_null(1.0).filter(train).mean().alias(f"mean:{task}"),
                    )
                ),
            )
        ).row(0, named=True)
        for task in declared:
            if checks[f"bad:{task}"]:
                raise DataError(
                    where,
                    f"{task}: {canvas.weights[task]!r} gives a negative or non-finite weight on training rows",
                    column=task,
                    rows=int(checks[f"bad:{task}"]),
                )
            mean = checks[f"mean:{task}"]
            record[task] = {
                "expression": canvas.weights[task],
                "train_mean": float(mean) if isinstance(mean, (int, float)) else None,
                "nulls_weighed_1": int(checks[f"nulls:{task}"]),
            }
    filled = [pl.col(weight_column(task)).fill_null(1.0) for task in declared]
    return weighted.with_columns(filled).drop(AGE_COLUMN), record
