"""The scale-out user store: two Redis hashes per version, ``monorec:users:<version>:rows`` (user id ->
float32 row bytes) and ``...:revisions`` (user id -> revision), shared by the replicas of every host.

Redis is durable by its own configuration, so a checkpoint writes nothing here; after a crash the loader
replays the log from its last committed offset and the revisions make the replay harmless. One writer per
version (its loader): the read-compare-write of :meth:`RedisUserStore.put` needs no script.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monorec.errors import ArtifactError, StreamUnavailable

__all__ = ["RedisUserStore"]


class RedisUserStore:
    def __init__(self, url: str, version: str, width: int) -> None:
        import redis  # optional engine: monorec[scale]

        self.width = width
        self._client: Any = redis.Redis.from_url(url)
        self._rows_key = f"monorec:users:{version}:rows"
        self._revisions_key = f"monorec:users:{version}:revisions"
        self._errors: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._errors as exc:  # the loader retries with backoff; a request falls back to online
            raise StreamUnavailable(f"redis user store: {exc}") from None

    def newer(self, user_ids: Sequence[str], revisions: np.ndarray) -> list[int]:
        if not user_ids:
            return []
        held = self._call(self._client.hmget, self._revisions_key, list(user_ids))
        return [i for i, r in enumerate(held) if r is None or int(r) < int(revisions[i])]

    def put(self, user_ids: Sequence[str], revisions: np.ndarray, rows: np.ndarray) -> int:
        positions = self.newer(user_ids, revisions)
        best: dict[str, int] = {}
        for i in positions:  # the newest of a user the batch holds twice
            if user_ids[i] not in best or int(revisions[i]) >= int(revisions[best[user_ids[i]]]):
                best[user_ids[i]] = i
        if not best:
            return 0
        data = np.ascontiguousarray(rows, dtype=np.float32)
        pipe = self._client.pipeline(transaction=True)  # rows and revisions together, or neither
        pipe.hset(self._rows_key, mapping={u: data[i].tobytes() for u, i in best.items()})
        pipe.hset(self._revisions_key, mapping={u: int(revisions[i]) for u, i in best.items()})
        self._call(pipe.execute)
        return len(best)

    def get(self, user_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        found = np.zeros(len(user_ids), dtype=bool)
        rows = np.zeros((len(user_ids), self.width), dtype=np.float32)
        if not user_ids:
            return found, rows
        for i, blob in enumerate(self._call(self._client.hmget, self._rows_key, list(user_ids))):
            if blob is None:
                continue
            if len(blob) != 4 * self.width:
                raise ArtifactError(f"{self._rows_key}: a row of {len(blob)} bytes, expected {4 * self.width}")
            rows[i] = np.frombuffer(blob, dtype=np.float32)
            found[i] = True
        return found, rows

    def revisions(self) -> dict[str, int]:
        held = self._call(self._client.hgetall, self._revisions_key)
        return {k.decode(): int(v) for k, v in held.items()}

    def __len__(self) -> int:
        return int(self._call(self._client.hlen, self._rows_key))

    def reserve(self, rows: int) -> None:
        """Nothing: the rows live in Redis."""

    def save(self, folder: Path) -> None:
        """Nothing: Redis keeps the rows (durable by its own configuration)."""

    def start_save(self, folder: Path) -> Callable[[], None]:
        return lambda: None

    def drop(self) -> None:
        self._call(self._client.delete, self._rows_key, self._revisions_key)

    def close(self) -> None:
        self._client.close()
