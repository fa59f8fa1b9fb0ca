"""What a declared per-sample weight is: a polars SQL expression over a row's log columns and its age
(see :mod:`monorec.data.weights`, which computes them). Here, below the config, so that the config can
check a declaration without importing the data layer.
"""

from __future__ import annotations

import polars as pl

__all__ = ["AGE_COLUMN", "RETRIEVAL", "parse_weight"]

AGE_COLUMN = "age_days"
RETRIEVAL = "retrieval"  # the weight key of the retrieval softmax (and the every-prefix loss)


def parse_weight(expression: str) -> pl.Expr:
    """The polars expression of a declared weight.

    Raises:
        ValueError: not a string, or not a valid polars SQL expression (the message says why).
    """
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError('a weight is a non-empty SQL expression string, e.g. "POWER(0.5, age_days / 180)"')
    try:
        return pl.sql_expr(expression)
    except Exception as exc:  # polars raises its SQLInterfaceError / SQLSyntaxError
        raise ValueError(f"not a valid polars SQL expression: {exc}") from exc
