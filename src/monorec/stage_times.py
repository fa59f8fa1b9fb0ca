"""Where a request's time goes: cumulative wall time per named stage of the model path (featurizing, the
context tower, the index search, the other sources, the ranker...), cheap enough to stay on in serving
(two clock reads and a lock per stage and batch). ``/metrics`` exposes it
(``monorec_model_path_seconds_total{stage}``) and ``bench/profile_request.py`` reads it stage by stage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

__all__ = ["StageTimes", "timed"]


class StageTimes:
    """Stage name -> (times entered, seconds spent), summed over every thread that records into it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}
        self._seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Adds the block's wall time to stage ``name`` (also when it raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self._calls[name] = self._calls.get(name, 0) + 1
            self._seconds[name] = self._seconds.get(name, 0.0) + seconds

    def snapshot(self) -> dict[str, tuple[int, float]]:
        """Stage -> (calls, seconds) so far, in the order the stages were first entered."""
        with self._lock:
            return {name: (self._calls[name], self._seconds[name]) for name in self._calls}


def timed(times: StageTimes | None, name: str) -> AbstractContextManager[None]:
    """``times.stage(name)``, or a no-op without ``times`` (a caller that does not measure)."""
    return nullcontext() if times is None else times.stage(name)
