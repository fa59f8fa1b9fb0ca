"""Users' initial states from logs: what a deployment's users table starts from before events arrive."""

from __future__ import annotations

import polars as pl

from monorec.config import ProjectConfig
from monorec.stream.changes import MAX_HISTORY, UserChange

__all__ = ["user_states"]


def user_states(rows: pl.DataFrame | pl.LazyFrame, config: ProjectConfig, revision: int = 0) -> list[UserChange]:
    """Each user's state as of their latest log row (columns ``ts`` and the context fields, as prepared):
    the profile fields of the user canvases (``[deploy] user_canvases``) at their latest non-null value, and
    the history field of their latest row that carries one (``"|"``-joined ids, oldest first).

    ``rows`` may be lazy (logs larger than memory, e.g. ``PreparedData.open(...).scan(split)``): each field's
    latest value is found by aggregates and joins on polars' streaming engine, a field at a time, holding
    one row per user.

    Returns:
        One :class:`UserChange` per user with ``revision``, in user id order.
    """
    fb = config.feedback
    user = fb.user_field
    plan = rows.lazy()
    names = plan.collect_schema().names()
    if user not in names:
        return []
    wanted = {f for c in config.canvases if c.name in config.deploy.user_canvases for f in c.fields}
    profile = sorted(f for f in wanted if f in names and f not in (user, fb.history_field))
    history = fb.history_field if fb.history_field in names else None
    users = plan.filter(pl.col(user).is_not_null())
    # one streaming pass per field, each collected on its own into one row per user: a single plan joining
    # every field's pass runs them side by side (at 50x the demo's logs, twice the peak memory)
    latest = users.select(pl.col(user)).unique().collect(engine="streaming")
    for column in [*profile, *([history] if history else [])]:
        present = users.filter(pl.col(column).is_not_null()).select(user, "ts", column)
        newest = present.group_by(user).agg(pl.col("ts").max().alias("_newest"))
        values = (
            present.join(newest, left_on=[user, "ts"], right_on=[user, "_newest"], how="inner")
            .group_by(user)
            .agg(pl.col(column).last())
        )
        latest = latest.join(values.collect(engine="streaming"), on=user, how="left")
    out = []
    for r in latest.sort(user).iter_rows(named=True):
        fields = tuple(sorted((f, r[f]) for f in profile if r[f] is not None and r[f] != ""))
        ids = [e for e in (r[history] or "").split("|") if e] if history else []
        out.append(UserChange(str(r[user]), revision, fields, tuple(ids[-MAX_HISTORY:])))
    return out
