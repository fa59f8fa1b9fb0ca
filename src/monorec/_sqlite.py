"""One SQLite file in WAL mode, the embedded default of every durable table (control plane, catalogue,
change log): readers never block the writer, and a transaction is durable when it returns."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

__all__ = ["SqliteFile"]


class SqliteFile:
    """A connection per transaction, so threads and processes share the file safely."""

    def __init__(self, path: str | Path, schema: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.transaction() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(schema)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection whose block is one transaction (committed on success, rolled back on error)."""
        with closing(sqlite3.connect(self.path, timeout=60)) as db, db:
            db.execute("PRAGMA synchronous=FULL")
            yield db
