"""The scale-out change log: a Redis stream with one consumer group per consumer.

Entries are ``XADD``-ed with the change in field ``c``; offsets are stream ids (``<ms>-<seq>``). A group's
consumer reads its own pending entries first (delivered before a crash, never acknowledged), then new ones
(``>``); ``commit`` acknowledges (``XACK``) every delivered entry up to the offset. Connection failures
surface as :class:`~monorec.stream.log.StreamUnavailable`, which loaders answer with backoff.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis

from monorec.stream.log import LogEntry, StreamUnavailable, offset_key

__all__ = ["RedisChangeLog"]

T = TypeVar("T")
CONSUMER = "loader"


class RedisChangeLog:
    def __init__(self, url: str, stream: str = "monorec:changes") -> None:
        self.url = url
        self.stream = stream
        self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2)
        self._lock = threading.Lock()
        self._pending_done: set[str] = set()  # groups whose redelivered entries were read already
        self._pending_after: dict[str, str] = {}  # group -> the last redelivered entry read (the next start)
        self._delivered: dict[str, list[str]] = {}  # group -> delivered, not yet acknowledged ids

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StreamUnavailable(f"redis at {self.url}: {exc}") from None

    def _group(self, group: str) -> str:
        return f"monorec:{group}"

    def append(self, payloads: Sequence[str]) -> list[str]:
        def run() -> list[str]:
            pipe = self._redis.pipeline(transaction=True)
            for payload in payloads:
                pipe.xadd(self.stream, {"c": payload})
            return [str(i) for i in pipe.execute()]

        return self._call(run)

    def head(self) -> str:
        def run() -> str:
            last = self._redis.xrevrange(self.stream, count=1)
            return str(last[0][0]) if last else "0"

        return self._call(run)

    def subscribe(self, group: str, start: str) -> None:
        def run() -> None:
            try:
                self._redis.xgroup_create(self.stream, self._group(group), id=start, mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

        self._call(run)

    def read(self, group: str, count: int, block_s: float = 0.0) -> list[LogEntry]:
        def run() -> list[Any]:
            entries: list[Any] = []
            if group not in self._pending_done:  # first what was delivered before a restart, never acked
                # from after the last one read: until a commit acknowledges them, the pending list still
                # starts with the entries read so far (reading from "0" again would return those forever)
                after = self._pending_after.get(group, "0")
                pending: Any = self._redis.xreadgroup(self._group(group), CONSUMER, {self.stream: after}, count=count)
                entries = list(pending[0][1]) if pending else []
                if entries:
                    self._pending_after[group] = str(entries[-1][0])
                if len(entries) < count:
                    self._pending_done.add(group)
            if len(entries) < count and group in self._pending_done:
                block = int(block_s * 1000) if block_s > 0 and not entries else None
                fresh: Any = self._redis.xreadgroup(
                    self._group(group), CONSUMER, {self.stream: ">"}, count=count - len(entries), block=block
                )
                entries += list(fresh[0][1]) if fresh else []
            return entries

        try:
            entries = self._call(run)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                raise KeyError(f"no consumer group {group!r} on stream {self.stream!r}") from None
            raise
        with self._lock:
            delivered = self._delivered.setdefault(group, [])
            known = set(delivered)
            delivered.extend(str(i) for i, _ in entries if str(i) not in known)
        # a pending entry trimmed from the stream meanwhile comes back without fields (dead-lettered as empty)
        return [LogEntry(str(i), (fields or {}).get("c", "")) for i, fields in entries]

    def commit(self, group: str, offset: str) -> None:
        with self._lock:
            delivered = self._delivered.get(group, [])
            done = [i for i in delivered if offset_key(i) <= offset_key(offset)]
        if done:
            self._call(lambda: self._redis.xack(self.stream, self._group(group), *done))
            with self._lock:
                acked = set(done)
                self._delivered[group] = [i for i in self._delivered.get(group, []) if i not in acked]

    def lag(self, group: str) -> int:
        def run() -> int:
            for info in self._redis.xinfo_groups(self.stream):
                if info["name"] == self._group(group):
                    return int(info.get("lag") or 0) + int(info.get("pending") or 0)
            raise KeyError(f"no consumer group {group!r} on stream {self.stream!r}")

        return self._call(run)

    def groups(self) -> list[str]:
        def run() -> list[str]:
            if not self._redis.exists(self.stream):
                return []
            names = [str(g["name"]) for g in self._redis.xinfo_groups(self.stream)]
            return sorted(n.removeprefix("monorec:") for n in names)

        return self._call(run)

    def drop(self, group: str) -> None:
        self._call(lambda: self._redis.xgroup_destroy(self.stream, self._group(group)))
        with self._lock:
            self._delivered.pop(group, None)
            self._pending_done.discard(group)
            self._pending_after.pop(group, None)

    def rewind(self, group: str) -> None:
        """The next read starts with the group's unacknowledged entries again (a restarted consumer)."""
        with self._lock:
            self._delivered.pop(group, None)
            self._pending_done.discard(group)
            self._pending_after.pop(group, None)

    def close(self) -> None:
        self._redis.close()
