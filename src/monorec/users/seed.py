"""Users' initial states from logs: what a deployment's users table starts from before events arrive."""

from __future__ import annotations

import polars as pl

from monorec.config import ProjectConfig
from monorec.stream.changes import MAX_HISTORY, UserChange

__all__ = ["user_states"]


def user_states(rows: pl.DataFrame, config: ProjectConfig, revision: int = 0) -> list[UserChange]:
    """Each user's state as of their latest log row (columns ``ts`` and the context fields, as prepared):
    the profile fields of the user canvases (``[deploy] user_canvases``) at their latest non-null value, and
    the history field of their latest row that carries one (``"|"``-joined ids, oldest first).

    Returns:
        One :class:`UserChange` per user with ``revision``, in user id order.
    """
    fb = config.feedback
    user = fb.user_field
    if user not in rows.columns or rows.height == 0:
        return []
    wanted = {f for c in config.canvases if c.name in config.deploy.user_canvases for f in c.fields}
    profile = [f for f in wanted if f in rows.columns and f not in (user, fb.history_field)]
    history = fb.history_field if fb.history_field in rows.columns else None
    columns = [*profile, *([history] if history else [])]
    latest = (
        rows.filter(pl.col(user).is_not_null())
        .sort("ts")
        .group_by(user)
        .agg([pl.col(c).drop_nulls().last().alias(c) for c in columns])
        .sort(user)
    )
    out = []
    for r in latest.iter_rows(named=True):
        fields = tuple(sorted((f, r[f]) for f in profile if r[f] is not None and r[f] != ""))
        ids = [e for e in (r[history] or "").split("|") if e] if history else []
        out.append(UserChange(str(r[user]), revision, fields, tuple(ids[-MAX_HISTORY:])))
    return out
