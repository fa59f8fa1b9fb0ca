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

    def append(self, payloads: Sequence[str]) -> list[str]:
        now = time.time()
        with self._db() as db:
            offsets = []
            for payload in payloads:  # one transaction: all of them or none
                cur = db.execute("INSERT INTO changes(payload, ts) VALUES (?, ?)", (payload, now))
                offsets.append(str(cur.lastrowid))
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
            with self._db() as db:
                with self._lock:
                    cursor = self._cursors.get(group)
                if cursor is None:
                    cursor = self._committed(db, group)
                rows = db.execute(
                    "SELECT offset, payload FROM changes WHERE offset > ? ORDER BY offset LIMIT ?", (cursor, count)
                ).fetchall()
            if rows or time.monotonic() >= deadline:
                with self._lock:
                    self._cursors[group] = int(rows[-1][0]) if rows else cursor
                return [LogEntry(str(o), p) for o, p in rows]
            time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))

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
