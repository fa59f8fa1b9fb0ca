"""A growable table of float32 rows addressed by string keys (item features, user embeddings).

Rows live in one buffer that doubles when full; an overwritten or removed key leaves a dead row behind,
reclaimed by compaction before the buffer grows. A row once written is never written again in its buffer
(growth and compaction copy into a new one), so a snapshot may hand out a read-only view. Thread-safe: one
writer and many readers at once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from monorec.artifacts import GrowingStringPack

__all__ = ["CapturedRows", "RowTable"]

_GATHER_SLICE = 2048  # rows per gather of CapturedRows.live_rows (~1.3 MB at 160 floats)


class CapturedRows(NamedTuple):
    """A :class:`RowTable` as of one moment, for a checkpoint: ``row_keys`` the keys of its rows 0..N-1
    packed (:func:`~monorec.artifacts.pack_strings`; a dead row's key too), ``live`` (N,) which rows hold a
    key's current value, ``rows`` (N, width) a read-only view of those rows (never written again)."""

    row_keys: np.ndarray
    live: np.ndarray
    rows: np.ndarray

    def live_rows(self) -> np.ndarray:
        """(L, width): the live rows, in row order. Gathered a slice at a time: one gather of a whole table
        (64 MB at 100k item features) holds the GIL for ~0.1 s, which every request thread of the process
        would wait for; a slice, well under a millisecond."""
        if self.live.all():
            return self.rows
        rows = np.flatnonzero(self.live)
        out = np.empty((len(rows), self.rows.shape[1]), dtype=self.rows.dtype)
        for start in range(0, len(rows), _GATHER_SLICE):
            np.take(self.rows, rows[start : start + _GATHER_SLICE], axis=0, out=out[start : start + _GATHER_SLICE])
        return out


class RowTable:
    """Key -> one float32 row of ``width`` values."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._rows = np.zeros((1024, width), dtype=np.float32)
        self._used = 0
        self._row_of: dict[str, int] = {}
        self._row_keys: list[str] = []  # the key each row 0.._used-1 was written for (append-only)
        self._saved_keys = GrowingStringPack()  # _row_keys as captured, each encoded once per buffer
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._row_of)

    def reserve(self, rows: int) -> None:
        """Makes room for ``rows`` rows in all at once, when their number is known beforehand (a bulk pass's
        users): doubling as they arrive would hold up to twice the rows, and old and new buffer together
        while it copies (at 73,296 users of 384 floats: a 201 MB buffer for 113 MB of rows)."""
        with self._lock:
            if rows > len(self._rows):
                self._grow_to(rows)

    def _grow_to(self, capacity: int) -> None:
        """A buffer of ``capacity`` rows holding the used ones (under the lock)."""
        grown = np.zeros((capacity, self.width), np.float32)
        grown[: self._used] = self._rows[: self._used]
        self._rows = grown

    def put(self, keys: Sequence[str], rows: np.ndarray) -> None:
        """Stores ``rows`` (N, width) under ``keys`` (N,), replacing what a key held."""
        with self._lock:
            if self._used + len(keys) > len(self._rows):
                if self._used > 2 * len(self._row_of):  # mostly dead rows: compact before growing
                    keep = list(self._row_of.items())
                    compacted = np.zeros_like(self._rows)  # never in place: a snapshot may be a view (below)
                    np.take(self._rows, [r for _, r in keep], axis=0, out=compacted[: len(keep)])
                    self._rows = compacted
                    self._row_of = {e: i for i, (e, _) in enumerate(keep)}
                    self._row_keys = [e for e, _ in keep]
                    self._saved_keys = GrowingStringPack()  # the rows were renumbered
                    self._used = len(keep)
                if self._used + len(keys) > len(self._rows):
                    self._grow_to(max(2 * len(self._rows), self._used + len(keys)))
            self._rows[self._used : self._used + len(keys)] = rows
            self._row_of.update(zip(keys, range(self._used, self._used + len(keys)), strict=True))
            self._row_keys.extend(keys)
            self._used += len(keys)

    def remove(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._row_of.pop(key, None)

    def known(self, keys: Sequence[str]) -> list[str]:
        """The given keys that have a row, in order."""
        with self._lock:
            return [k for k in keys if k in self._row_of]

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """The rows (N, width) of ``keys``.

        Raises:
            KeyError: a key has no row.
        """
        with self._lock:
            return self._rows[[self._row_of[k] for k in keys]]

    def capture(self) -> CapturedRows:
        """The table as of one moment, cheaply (a checkpoint's capture, while its writer waits): the
        row numbers of the live keys and the keys written since the last capture are read under the lock;
        no row is copied (rows are never written again) and no key is encoded twice (rows are appended in
        order and renumbered only by a compaction). :meth:`CapturedRows.live_rows` gathers later."""
        with self._lock:
            used = self._used
            self._saved_keys.extend(self._row_keys[self._saved_keys.count : used])
            row_keys = self._saved_keys.packed()
            live = np.zeros(used, dtype=bool)
            live[np.fromiter(self._row_of.values(), dtype=np.int64, count=len(self._row_of))] = True
            view = self._rows[:used]
        view.flags.writeable = False
        return CapturedRows(row_keys, live, view)

    def snapshot(self) -> tuple[list[str], np.ndarray]:
        """Every key and its row (N, width) as of one moment (for a checkpoint): a read-only array that
        later writes leave as it is. Only the keys and their row numbers are read under the lock; the rows
        are gathered after it, so readers and the writer wait ~5 ms at 100k keys, not for a copy of the
        table (at 100k item features of 160 floats, 64 MB)."""
        with self._lock:
            keys = list(self._row_of)
            rows = np.fromiter(self._row_of.values(), dtype=np.int64, count=len(keys))
            buffer, used = self._rows, self._used
        # a buffer's rows up to ``used`` are never written again (writes append after them, growth and
        # compaction make a new buffer), so reading them outside the lock is safe
        if used == len(keys):
            # no dead row: the keys hold rows 0..used-1 in their order (rows are appended as keys arrive,
            # and a compaction renumbers them in the keys' order). A view, not a copy (at 1M item
            # features of 160 floats, a 640 MB copy per checkpoint)
            view = buffer[:used]
            view.flags.writeable = False
            return keys, view
        return keys, np.take(buffer, rows, axis=0)
