"""The deployment control plane: each deployed version's state, the serving pointers, dead letters, and
the replicas that serve the deployment (their heartbeats: which version each serves).

SQLite by default (one file beside the deployment's indexes); every transition is one transaction, so a
restarted process finds each version exactly in the state it last reached.

States of a deployed version::

    staging  -> its consumer group exists (at ``start_offset``); bulk load and catch-up in progress
    ready    -> built, caught up and validated
    serving  -> the version new requests are pinned to (pointer ``serving``)
    standby  -> the previous serving version, drained, still fed by its loader: rollback target
    retired  -> its index is freed and its consumer group dropped
    failed   -> validation failed (``error`` says why); never serves
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from monorec._sqlite import SqliteFile

__all__ = ["HEARTBEAT_S", "LIVE_STATES", "LIVE_WITHIN_S", "ControlPlane", "DeadLetter", "Deployed", "ReplicaSeen"]

LIVE_STATES = ("staging", "ready", "serving", "standby")  # versions whose index a loader keeps fresh
HEARTBEAT_S = 1.0  # between a replica's heartbeats when what it serves does not change
LIVE_WITHIN_S = 5 * HEARTBEAT_S  # a replica whose last heartbeat is older is taken for dead

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deployed (
    version TEXT PRIMARY KEY, state TEXT NOT NULL, start_offset TEXT, error TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pointers (name TEXT PRIMARY KEY, version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, consumer TEXT NOT NULL, log_offset TEXT NOT NULL,
    payload TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS replicas (
    name TEXT PRIMARY KEY, pid INTEGER NOT NULL, serving TEXT, seen_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS replica_reports (
    replica TEXT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (replica, kind));
"""


@dataclass(frozen=True)
class Deployed:
    version: str
    state: str
    start_offset: str | None
    error: str | None
    updated_at: float


@dataclass(frozen=True)
class DeadLetter:
    consumer: str
    log_offset: str
    payload: str
    reason: str


@dataclass(frozen=True)
class ReplicaSeen:
    """A replica's last heartbeat: the version it serves (None before it serves one) and when."""

    name: str
    pid: int
    serving: str | None
    seen_at: float


class ControlPlane:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = SqliteFile(self.path, _SCHEMA).transaction

    def get(self, version: str) -> Deployed | None:
        with self._db() as db:
            row = db.execute(
                "SELECT version, state, start_offset, error, updated_at FROM deployed WHERE version = ?", (version,)
            ).fetchone()
        return None if row is None else Deployed(*row)

    def all(self) -> list[Deployed]:
        with self._db() as db:
            rows = db.execute("SELECT version, state, start_offset, error, updated_at FROM deployed ORDER BY version")
            return [Deployed(*r) for r in rows.fetchall()]

    def in_state(self, *states: str) -> list[str]:
        return [d.version for d in self.all() if d.state in states]

    def set_state(self, version: str, state: str, *, start_offset: str | None = None, error: str | None = None) -> None:
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT INTO deployed VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(version) DO UPDATE SET "
                "state = excluded.state, start_offset = COALESCE(excluded.start_offset, deployed.start_offset), "
                "error = excluded.error, updated_at = excluded.updated_at",
                (version, state, start_offset, error, now, now),
            )

    def pointer(self, name: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT version FROM pointers WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def switch(self, serving: str, previous: str | None, previous_state: str = "standby") -> None:
        """One transaction: ``serving`` serves, ``previous`` (the old serving version) moves to standby."""
        now = time.time()
        with self._db() as db:
            db.execute(
                "UPDATE deployed SET state = 'serving', error = NULL, updated_at = ? WHERE version = ?", (now, serving)
            )
            db.execute("INSERT OR REPLACE INTO pointers VALUES ('serving', ?)", (serving,))
            if previous is not None and previous != serving:
                db.execute(
                    "UPDATE deployed SET state = ?, updated_at = ? WHERE version = ?", (previous_state, now, previous)
                )
                db.execute("INSERT OR REPLACE INTO pointers VALUES ('previous', ?)", (previous,))

    def setting(self, name: str) -> str | None:
        """A named piece of lifecycle state (e.g. the running trial, as JSON); None when unset."""
        with self._db() as db:
            row = db.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, name: str, value: str | None) -> None:
        """Sets (or, with None, clears) a named piece of lifecycle state, in one transaction."""
        with self._db() as db:
            if value is None:
                db.execute("DELETE FROM settings WHERE name = ?", (name,))
            else:
                db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (name, value))

    def add_dead_letter(self, consumer: str, log_offset: str, payload: str, reason: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO dead_letters(consumer, log_offset, payload, reason, at) VALUES (?, ?, ?, ?, ?)",
                (consumer, log_offset, payload[:65536], reason, time.time()),
            )

    def dead_letters(self, consumer: str | None = None) -> list[DeadLetter]:
        with self._db() as db:
            rows = db.execute(
                "SELECT consumer, log_offset, payload, reason FROM dead_letters "
                "WHERE ? IS NULL OR consumer = ? ORDER BY id",
                (consumer, consumer),
            ).fetchall()
        return [DeadLetter(*r) for r in rows]

    def heartbeat(self, replica: str, pid: int, serving: str | None) -> None:
        """A replica says it is alive and which version its new requests are pinned to."""
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO replicas VALUES (?, ?, ?, ?)", (replica, pid, serving, time.time()))

    def forget_replica(self, replica: str) -> None:
        """A replica that stopped (cleanly) leaves the deployment, with its reports."""
        with self._db() as db:
            db.execute("DELETE FROM replicas WHERE name = ?", (replica,))
            db.execute("DELETE FROM replica_reports WHERE replica = ?", (replica,))

    def put_report(self, replica: str, kind: str, body: str) -> None:
        """What a replica measured of ``kind`` (e.g. its side of a trial, as JSON), replacing its last one."""
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO replica_reports VALUES (?, ?, ?, ?)", (replica, kind, body, time.time()))

    def reports(self, kind: str, seen_within_s: float) -> dict[str, str]:
        """Replica -> its last report of ``kind``, for the replicas heard from in the last ``seen_within_s``."""
        with self._db() as db:
            rows = db.execute(
                "SELECT r.replica, r.body FROM replica_reports r JOIN replicas a ON a.name = r.replica "
                "WHERE r.kind = ? AND a.seen_at >= ? ORDER BY r.replica",
                (kind, time.time() - seen_within_s),
            ).fetchall()
        return {str(name): str(body) for name, body in rows}

    def replicas(self, seen_within_s: float) -> list[ReplicaSeen]:
        """The replicas whose last heartbeat is at most ``seen_within_s`` old (a dead one drops out)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT name, pid, serving, seen_at FROM replicas WHERE seen_at >= ? ORDER BY name",
                (time.time() - seen_within_s,),
            ).fetchall()
        return [ReplicaSeen(*r) for r in rows]
