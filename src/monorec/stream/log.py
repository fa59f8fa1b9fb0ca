"""The change log protocol and its embedded default, a SQLite table in WAL mode.

A log is durable, ordered and addressed by offsets (opaque strings, ordered by the backend). Consumers
are named groups: a group is created at an offset (``subscribe``), reads what comes after its cursor, and
``commit``s an offset once everything up to it is applied (durably). After a restart a group reads again
from its last commit, so a consumer that crashed between applying and committing sees those changes again
(changes are idempotent, see :mod:`monorec.stream.changes`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from monorec._sqlite import SqliteFile
from monorec.errors import StreamUnavailable

__all__ = ["ChangeLog", "LogEntry", "SqliteChangeLog", "StreamUnavailable", "offset_key"]


@dataclass(frozen=True)
class LogEntry:
    offset: str
    payload: str  # the change as JSON text (validated by the consumer, not the log)


@runtime_checkable
class ChangeLog(Protocol):
    def append(self, payloads: Sequence[str]) -> list[str]:
        """Appends changes (JSON texts) in order; returns their offsets."""
        ...

    def head(self) -> str:
        """The offset of the newest entry ("0" when the log is empty)."""
        ...

    def subscribe(self, group: str, start: str) -> None:
        """Creates ``group`` reading the entries after ``start`` (no-op when it exists)."""
        ...

    def read(self, group: str, count: int, block_s: float = 0.0) -> list[LogEntry]:
        """Up to ``count`` entries after the group's cursor, waiting up to ``block_s`` for new ones."""
        ...

    def commit(self, group: str, offset: str) -> None:
        """Marks every entry up to ``offset`` as applied by ``group``."""
        ...

    def lag(self, group: str) -> int:
        """Entries not yet committed by ``group``."""
        ...

    def groups(self) -> list[str]: ...

    def drop(self, group: str) -> None: ...

    def rewind(self, group: str) -> None:
        """Forgets what this process read but did not commit: the next read starts after the last commit."""
        ...

    def close(self) -> None: ...


POLL_S = 0.005  # how often a blocked read looks for another process's appends while the log is busy
POLL_IDLE_S = 0.025  # ... and once it has been quiet for ACTIVE_S
ACTIVE_S = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (offset INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT NOT NULL, ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY, committed INTEGER NOT NULL);
"""


class SqliteChangeLog:
    """The embedded log: ``changes(offset INTEGER PRIMARY KEY, payload, ts)`` and ``groups(name, committed)``
    in one SQLite file in WAL mode (readers never block the writer; a commit is durable on return)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._cursors: dict[str, int] = {}
        self._lock = threading.Lock()
        self._db = SqliteFile(self.path, _SCHEMA).transaction
        # a blocked read waits on this: an append through this object wakes it at once; another process's
        # append is found by polling (POLL_S, or POLL_IDLE_S once the log has been quiet for ACTIVE_S)
        self._appended = threading.Condition()
        self._appends = 0
        self._active_until = 0.0

    def append(self, payloads: Sequence[str]) -> list[str]:
        now = time.time()
        with self._db() as db:
            offsets = []
            for payload in payloads:  # one transaction: all of them or none
                cur = db.execute("INSERT INTO changes(payload, ts) VALUES (?, ?)", (payload, now))
                offsets.append(str(cur.lastrowid))
        with self._appended:
            self._appends += 1
            self._appended.notify_all()
        return offsets

    def head(self) -> str:
        with self._db() as db:
            row = db.execute("SELECT MAX(offset) FROM changes").fetchone()
        return str(row[0] or 0)

    def subscribe(self, group: str, start: str) -> None:
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO groups(name, committed) VALUES (?, ?)", (group, int(start)))

    def _committed(self, db: sqlite3.Connection, group: str) -> int:
        row = db.execute("SELECT committed FROM groups WHERE name = ?", (group,)).fetchone()
        if row is None:
            raise KeyError(f"no consumer group {group!r} on this log")
        return int(row[0])

    def read(self, group: str, count: int, block_s: float = 0.0) -> list[LogEntry]:
        deadline = time.monotonic() + block_s
        while True:
            appends = self._appends
            with self._db() as db:
                with self._lock:
                    cursor = self._cursors.get(group)
                if cursor is None:
                    cursor = self._committed(db, group)
                rows = db.execute(
                    "SELECT offset, payload FROM changes WHERE offset > ? ORDER BY offset LIMIT ?", (cursor, count)
                ).fetchall()
            now = time.monotonic()
            if rows or now >= deadline:
                with self._lock:
                    self._cursors[group] = int(rows[-1][0]) if rows else cursor
                if rows:
                    self._active_until = now + ACTIVE_S
                return [LogEntry(str(o), p) for o, p in rows]
            # an idle serving process's loaders polled 400 times a second (~5% of a core in B8, each poll a
            # GIL round trip beside the requests): in-process appends now wake the reader, polls slow down
            poll = POLL_S if now < self._active_until else POLL_IDLE_S
            with self._appended:
                if self._appends == appends:
                    self._appended.wait(min(poll, deadline - now))

    def commit(self, group: str, offset: str) -> None:
        with self._db() as db:
            db.execute("UPDATE groups SET committed = MAX(committed, ?) WHERE name = ?", (int(offset), group))

    def committed(self, group: str) -> str:
        with self._db() as db:
            return str(self._committed(db, group))

    def lag(self, group: str) -> int:
        with self._db() as db:
            committed = self._committed(db, group)
            return int(db.execute("SELECT COUNT(*) FROM changes WHERE offset > ?", (committed,)).fetchone()[0])

    def groups(self) -> list[str]:
        with self._db() as db:
            return [r[0] for r in db.execute("SELECT name FROM groups ORDER BY name")]

    def drop(self, group: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM groups WHERE name = ?", (group,))
        with self._lock:
            self._cursors.pop(group, None)

    def rewind(self, group: str) -> None:
        """Forgets the in-memory cursor: the next read starts after the last commit (a restarted consumer)."""
        with self._lock:
            self._cursors.pop(group, None)

    def close(self) -> None:
        """Nothing held open between calls."""


def offset_key(offset: str) -> tuple[int, int]:
    """Orders offsets of either backend: SQLite's ``"123"`` and Redis stream ids ``"<ms>-<seq>"``."""
    first, _, second = offset.partition("-")
    return int(first), int(second or 0)
