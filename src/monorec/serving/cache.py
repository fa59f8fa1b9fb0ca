"""A bounded, thread-safe LRU of answers with an optional time to live.

The engine keeps two: the answer cache (``cache_ttl_s`` of the environment: identical requests within the
TTL share one answer, which is how fresh data may be traded for load) and the last-good store (no TTL: the
most recent model answer per request, the ``cached`` fallback when the model misses its deadline).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["LruCache"]

V = TypeVar("V")


class LruCache(Generic[V]):
    """Key -> value, at most ``size`` entries (least recently used evicted first), each valid for ``ttl_s``
    seconds after it was stored (``None``: forever)."""

    def __init__(self, size: int, ttl_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            stored, value = item
            if self.ttl_s is not None and self._clock() - stored > self.ttl_s:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return value

    def put(self, key: str, value: V) -> None:
        with self._lock:
            self._items[key] = (self._clock(), value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
