"""A version's offline sources asked within a deadline: one that fails or is late is skipped, not waited for.

Serving asks every offline source a canvas declares (lexical, co-occurrence, popular) for the same
requests. The in-process ones answer in well under a millisecond and run on the caller's thread (a thread
hop would cost them more than they take); a remote one (Qdrant's sparse vectors) runs on a process-wide
pool and is waited for only until the deadline. A skipped source is counted per source (``skipped``,
``monorec_sources_skipped`` in ``/metrics``) and logged at most once per ``LOG_EVERY_S`` per source: a
stalled engine would otherwise log once per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from monorec.config import SOURCE_NAMES
from monorec.retrieval.sources import OFFLINE_SOURCES, CandidateSources, Proposals

__all__ = ["DeadlineSources"]

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


class DeadlineSources:
    """The offline sources of one version (``name``, for logs), asked side by side within a deadline."""

    def __init__(self, name: str, sources: CandidateSources) -> None:
        self.name = name
        self.sources = sources
        self.skipped: dict[str, int] = {}  # source -> how many times it failed or was late
        self._last_log: dict[str, float] = {}
        self._lock = threading.Lock()

    def propose(
        self, canvas: str, records: Sequence[dict[str, Any]], timeout_s: float | None = None
    ) -> tuple[list[dict[str, list[float]]], list[str]]:
        """Per normalized record: entity id -> its (S,) source scores (``SOURCE_NAMES`` order; column 0, the
        embedding source, stays 0) from the canvas's offline sources; and the sources that answered. Without
        ``timeout_s`` every source is waited for (a failing one is still skipped)."""
        depths = self.sources.config.canvas(canvas).sources
        wanted = [s for s in OFFLINE_SOURCES if s in depths]
        out: list[dict[str, list[float]]] = [{} for _ in records]
        answered = []
        for source, found in zip(wanted, self._run(wanted, canvas, records, depths, timeout_s), strict=True):
            if isinstance(found, BaseException):  # one broken or late source never costs the others
                self._skip(source, found)
                continue
            answered.append(source)
            column = SOURCE_NAMES.index(source)
            for r, row in enumerate(found):
                for entity_id, score in row:
                    out[r].setdefault(entity_id, [0.0] * len(SOURCE_NAMES))[column] = score
        return out, answered

    def _skip(self, source: str, error: BaseException) -> None:
        with self._lock:
            self.skipped[source] = self.skipped.get(source, 0) + 1
            now = time.monotonic()
            if now - self._last_log.get(source, -1e9) < LOG_EVERY_S:
                return
            self._last_log[source] = now
            total = self.skipped[source]
        log.warning("%s: candidate source %s skipped (%d times so far): %r", self.name, source, total, error)

    def _run(
        self,
        wanted: Sequence[str],
        canvas: str,
        records: Sequence[dict[str, Any]],
        depths: dict[str, int],
        timeout_s: float | None,
    ) -> list[Proposals | BaseException]:
        """Each source's proposals, or the exception it raised (TimeoutError: late)."""

        def one(source: str) -> Proposals:
            return self.sources.propose(source, canvas, records, depths[source])

        remote = self.sources.remote if timeout_s is not None else set()
        futures = {s: _pool().submit(one, s) for s in wanted if s in remote}
        wait_s = timeout_s or 0.0
        deadline = time.monotonic() + wait_s
        results: list[Proposals | BaseException] = []
        for source in wanted:
            try:
                if source not in futures:
                    results.append(one(source))
                    continue
                results.append(futures[source].result(timeout=max(0.0, deadline - time.monotonic())))
            except FutureTimeout:
                futures[source].cancel()  # a late source may still finish; its answer is dropped
                results.append(TimeoutError(f"no answer within {wait_s * 1000:.0f} ms"))
            except Exception as exc:
                results.append(exc)
        return results


def _pool() -> ThreadPoolExecutor:
    """The threads remote sources run on (one process-wide pool, created on first use; a source that hangs
    holds one of them, and later requests skip it as late)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=2 * len(OFFLINE_SOURCES), thread_name_prefix="monorec-source")
        return _POOL
