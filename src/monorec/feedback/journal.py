"""The feedback journal: every answer's unified context, and what users did with it (events).

Two tables in one SQLite file (WAL) in the deployment folder:

- ``answers(request_id, ts, canvas, version, context, items)``: what the model saw (the normalised unified
  context, JSON) and what it answered (entity ids, in order). Written off the request path by one writer
  thread from a bounded queue: a full queue drops the record and counts it, it never slows an answer.
- ``events(event_id, request_id, user_id, canvas, entity_id, kind, value, ts, received)``: impressions,
  clicks, likes, watch time and ratings. ``event_id`` is the idempotency key: a repeated event is stored
  once (``INSERT OR IGNORE``), so a client may retry freely. A batch is one transaction.

:mod:`monorec.feedback.export` joins both into training logs in the documented schema.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from monorec._sqlite import SqliteFile

__all__ = ["AnswerRecord", "EventRecord", "FeedbackJournal"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    request_id TEXT PRIMARY KEY, ts REAL NOT NULL, canvas TEXT NOT NULL, version TEXT,
    context TEXT NOT NULL, items TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY, request_id TEXT, user_id TEXT NOT NULL, canvas TEXT NOT NULL,
    entity_id TEXT NOT NULL, kind TEXT NOT NULL, value REAL, ts REAL NOT NULL, received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_request ON events(request_id);
CREATE INDEX IF NOT EXISTS events_by_user ON events(user_id, kind, ts);
"""


@dataclass(frozen=True)
class AnswerRecord:
    """One answer: its id, when, which canvas and version, the context the model saw, the entities."""

    request_id: str
    ts: float
    canvas: str
    version: str | None
    context: dict[str, Any]
    items: list[str]


@dataclass(frozen=True)
class EventRecord:
    """One thing a user did with an entity (validated where it entered: the API's message)."""

    event_id: str
    request_id: str | None
    user_id: str
    canvas: str
    entity_id: str
    kind: str
    value: float | None
    ts: float


class FeedbackJournal:
    """Answers and events, durable in ``path``; see the module docstring.

    Args:
        path: the SQLite file (created with its folder).
        queue_size: answers waiting for the writer at most; beyond it they are dropped and counted.
        linger_s: after an answer arrives, the writer waits this long for more to write in the same
            transaction (readers of the answers :meth:`flush` first, so they never miss one).
    """

    def __init__(self, path: str | Path, *, queue_size: int = 10_000, linger_s: float = 0.05) -> None:
        self.path = Path(path)
        self._db = SqliteFile(self.path, _SCHEMA)
        self._queue: queue.Queue[AnswerRecord | None] = queue.Queue(maxsize=queue_size)
        self.linger_s = linger_s
        self.dropped_answers = 0
        self._writer = threading.Thread(target=self._write_answers, name="feedback-journal", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ answers (off the request path)

    def record_answer(self, answer: AnswerRecord) -> None:
        """Queues an answer for the writer; drops it (counted) when the queue is full."""
        try:
            self._queue.put_nowait(answer)
        except queue.Full:
            self.dropped_answers += 1

    def _write_answers(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            # what queues within linger_s goes in the same transaction: a server answering hundreds of
            # requests a second committed (and fsynced) a few answers at a time, ~12% of a core in B8
            until = time.monotonic() + self.linger_s
            while len(batch) < 512 and batch[-1] is not None:
                try:
                    remaining = until - time.monotonic()
                    batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            answers = [a for a in batch if a is not None]
            try:
                if answers:
                    with self._db.transaction() as db:
                        db.executemany(
                            "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                            [
                                (a.request_id, a.ts, a.canvas, a.version, json.dumps(a.context), json.dumps(a.items))
                                for a in answers
                            ],
                        )
            except Exception:  # a full disk must not kill the writer: the answers are lost and counted
                log.exception("could not write %d answers to the feedback journal", len(answers))
                self.dropped_answers += len(answers)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if any(a is None for a in batch):
                return

    def flush(self) -> None:
        """Waits until every queued answer is written."""
        self._queue.join()

    # ------------------------------------------------------------------ events

    def record_events(self, events: Sequence[EventRecord]) -> tuple[int, int]:
        """Stores events in one transaction; returns (new, duplicates: an ``event_id`` already stored)."""
        received = time.time()
        with self._db.transaction() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.event_id, e.request_id, e.user_id, e.canvas, e.entity_id, e.kind, e.value, e.ts, received)
                    for e in events
                ],
            )
            new = db.total_changes - before
        return new, len(events) - new

    def recent_entities(self, user_id: str, kind: str, limit: int) -> list[str]:
        """The entities of the user's ``limit`` most recent events of ``kind``, oldest first (what a request
        that names the user but no history is given as its history: the user's next answer reflects what
        they just did). One indexed read; a user with 10^5 events costs the same."""
        with self._db.transaction() as db:
            rows = db.execute(
                "SELECT entity_id FROM events WHERE user_id = ? AND kind = ? ORDER BY ts DESC, rowid DESC LIMIT ?",
                (user_id, kind, limit),
            ).fetchall()
        return [r[0] for r in reversed(rows)]

    def rates_by_version(self, since: float) -> dict[str, dict[str, dict[str, float]]]:
        """canvas -> version -> answers since ``since`` and, per event kind, the events on them per answer
        (click rate, like rate...): how users took each version's answers during a trial."""
        self.flush()
        with self._db.transaction() as db:
            answers = db.execute(
                "SELECT canvas, version, COUNT(*) FROM answers WHERE ts >= ? GROUP BY canvas, version", (since,)
            ).fetchall()
            events = db.execute(
                "SELECT a.canvas, a.version, e.kind, COUNT(DISTINCT e.request_id || '|' || e.entity_id) "
                "FROM events e JOIN answers a ON a.request_id = e.request_id WHERE a.ts >= ? "
                "GROUP BY a.canvas, a.version, e.kind",
                (since,),
            ).fetchall()
        out: dict[str, dict[str, dict[str, float]]] = {}
        for canvas, version, n in answers:
            out.setdefault(canvas, {})[str(version)] = {"answers": float(n)}
        for canvas, version, kind, n in events:
            row = out.get(canvas, {}).get(str(version))
            if row is not None:
                row[f"{kind}_rate"] = n / row["answers"]
        return out

    # ------------------------------------------------------------------ reading (export)

    def answers(self) -> pl.DataFrame:
        """Every answer: request_id, ts, canvas, version, context (JSON), items (JSON)."""
        self.flush()
        with self._db.transaction() as db:
            rows = db.execute("SELECT request_id, ts, canvas, version, context, items FROM answers").fetchall()
        schema = {"request_id": pl.String, "ts": pl.Float64, "canvas": pl.String, "version": pl.String}
        return pl.DataFrame(rows, schema={**schema, "context": pl.String, "items": pl.String}, orient="row")

    def events(self) -> pl.DataFrame:
        """Every event, in the order received."""
        with self._db.transaction() as db:
            rows = db.execute(
                "SELECT event_id, request_id, user_id, canvas, entity_id, kind, value, ts FROM events ORDER BY rowid"
            ).fetchall()
        schema = {
            "event_id": pl.String,
            "request_id": pl.String,
            "user_id": pl.String,
            "canvas": pl.String,
            "entity_id": pl.String,
            "kind": pl.String,
            "value": pl.Float64,
            "ts": pl.Float64,
        }
        return pl.DataFrame(rows, schema=schema, orient="row")

    def close(self) -> None:
        """Writes what is queued, then stops the writer."""
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(timeout=30)
        self._db.close()
