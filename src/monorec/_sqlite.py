"""One SQLite file in WAL mode, the embedded default of every durable table (control plane, catalogue,
change log): readers never block the writer, and a transaction is durable when it returns."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["SqliteFile"]


class SqliteFile:
    """One connection per thread, kept open: loaders poll their log every few milliseconds, and opening a
    connection per poll cost ~40% of a core for an idle deployment. Each ``transaction()`` block is one
    transaction (committed on success, rolled back on error); processes share the file through SQLite's
    own locking."""

    def __init__(self, path: str | Path, schema: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self.transaction() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(schema)

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60)
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection; the block is one transaction."""
        db = self._connection()
        with db:
            yield db

    def data_version(self) -> int:
        """A number that changes when another connection (another thread's, another process's) commits to
        the file; this thread's own commits leave it as it is (SQLite's ``PRAGMA data_version``)."""
        return int(self._connection().execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        """Closes this thread's connection (others close when their thread's state is collected)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
