"""Commits paced in time: at most one per interval while writes stream, and always within the interval of
the last write.

A version's lexical index makes streamed changes searchable by committing them, and each tantivy commit
writes a new segment (files, an fsync, then background merges of the small segments). Committing once
per batch of changes made a version's loader spend half its time committing at 1,000 changes/s (B6), on
the cores that answer queries. Paced, the commits follow the clock instead of the batches: a change
that arrives after a quiet interval is committed at once, one that arrives sooner waits for the
interval's end (a timer commits it even when nothing more arrives). Durability does not depend on these
commits: a checkpoint commits and copies the index, and the change log replays what came after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["PacedCommit"]

log = logging.getLogger(__name__)


class PacedCommit:
    """Calls ``commit`` at most once per ``every_s`` seconds and within ``every_s`` of each :meth:`written`
    (``every_s`` <= 0: at once, every time)."""

    def __init__(self, commit: Callable[[], None], every_s: float, name: str = "commit") -> None:
        self._commit, self.every_s, self.name = commit, every_s, name
        self._lock = threading.Lock()
        self._last = -float("inf")  # monotonic time of the last commit started
        self._timer: threading.Timer | None = None
        self._closed = False

    def written(self) -> None:
        """Writes were made: commits now when the last commit is older than the interval, else schedules
        one for the interval's end (one at most is pending). Raises what a commit made now raises."""
        with self._lock:
            if self._closed or self._timer is not None:
                return  # closed, or a commit is due already: it will take these writes too
            wait = self._last + self.every_s - time.monotonic()
            if wait > 0:
                self._timer = threading.Timer(wait, self._due)
                self._timer.name = f"paced-{self.name}"
                self._timer.daemon = True
                self._timer.start()
                return
            self._last = time.monotonic()
        self._commit()

    def _due(self) -> None:
        with self._lock:
            self._timer = None
            if self._closed:
                return
            self._last = time.monotonic()
        try:
            self._commit()
        except Exception:  # on the timer's thread nobody can catch it: the next write or checkpoint commits
            log.exception("%s: a paced commit failed", self.name)

    @property
    def pending(self) -> bool:
        """Whether a commit is scheduled and has not started yet."""
        with self._lock:
            return self._timer is not None

    def close(self) -> None:
        """Cancels a pending commit; later writes commit nothing (the owner is closing)."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
