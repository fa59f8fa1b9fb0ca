"""Producing changes (catalogue entities, user states): validate, then append to the deployment's change log
(all or none).

Producers need no deployment: any process may publish while another owns the deployment folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monorec.errors import ChangeError
from monorec.stream.changes import AnyChange, Change, UserChange, parse_change
from monorec.stream.log import ChangeLog, SqliteChangeLog

__all__ = ["MAX_PUBLISH_BATCH", "open_log", "publish_changes"]

MAX_PUBLISH_BATCH = 10_000  # changes appended in one transaction


def open_log(root: str | Path, redis_url: str | None = None) -> ChangeLog:
    """The deployment's change log: a Redis stream when ``redis_url`` is given, else ``root/changes.sqlite``."""
    if redis_url:
        from monorec.stream.redis_log import RedisChangeLog  # optional engine

        return RedisChangeLog(redis_url)
    return SqliteChangeLog(Path(root) / "changes.sqlite")


def publish_changes(
    log: ChangeLog, changes: Sequence[AnyChange | dict[str, Any]], entity_types: Sequence[str]
) -> list[str]:
    """Validates changes and appends them to the log (all or none); returns their offsets.

    Raises:
        ChangeError: a change is malformed or of an undeclared entity type, or the batch is too large.
    """
    if len(changes) > MAX_PUBLISH_BATCH:
        raise ChangeError("*", f"{len(changes)} changes in one batch; at most {MAX_PUBLISH_BATCH}")
    # Change objects are checked like any payload: the log must never carry what a consumer cannot apply
    parsed = [parse_change(c.to_dict() if isinstance(c, Change | UserChange) else c, entity_types) for c in changes]
    return log.append([c.to_json() for c in parsed])
