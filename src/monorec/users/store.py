"""Each deployed version's user store: user id -> that version's encoding of the user (DESIGN section 7b).

A row is what the version's context tower makes of the user's stored state (profile and recent history,
in the context of the user canvas): its context features (F_c,) followed by its embedding (D,), so a
request in ``stored`` mode skips the context tower and the ranker still reads the same features. Rows
carry the revision of the user state they encode; a row is only replaced by a newer revision, so a
replayed change is harmless. One writer per version (its loader), any number of readers.

Backends behind :class:`UserStore`: :class:`LocalUserStore` (in memory, checkpointed with the version's
index into its checkpoint folder: the embedded default) and
:class:`~monorec.users.redis_store.RedisUserStore` (two Redis hashes per version, shared by every replica
on any host).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from monorec.artifacts import pack_strings, unpack_strings
from monorec.errors import ArtifactError
from monorec.row_table import RowTable

__all__ = ["USERS_FILE", "LocalUserStore", "UserStore"]

USERS_FILE = "users.npz"  # a local store's file in the version's index checkpoint


@runtime_checkable
class UserStore(Protocol):
    width: int  # F_c + D

    def put(self, user_ids: Sequence[str], revisions: np.ndarray, rows: np.ndarray) -> int:
        """Stores rows (N, width) of users (N,) whose revision (N,) is newer than the stored one; returns
        how many it stored."""
        ...

    def newer(self, user_ids: Sequence[str], revisions: np.ndarray) -> list[int]:
        """Positions of the users whose revision is newer than the stored one (or who are not stored)."""
        ...

    def get(self, user_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(found (N,) bool, rows (N, width), zeros where not found)."""
        ...

    def revisions(self) -> dict[str, int]:
        """Stored user id -> the revision its row encodes."""
        ...

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` rows in all, about to be stored (a bulk pass); a hint, nothing when not needed."""
        ...

    def __len__(self) -> int: ...

    def save(self, folder: Path) -> None:
        """Writes what a checkpoint needs into ``folder`` (nothing for a store that is durable itself)."""
        ...

    def start_save(self, folder: Path) -> Callable[[], None]:
        """:meth:`save` in two steps: captures the store now; the returned function writes the capture."""
        ...

    def drop(self) -> None:
        """Deletes the store's data (the version is retired)."""
        ...

    def close(self) -> None: ...


class LocalUserStore:
    """The embedded default: rows in memory, saved into each checkpoint of the version's index (so they
    always reflect the same log offset as the index), loaded from the last one after a restart."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._rows = RowTable(width)
        self._revision: dict[str, int] = {}

    def newer(self, user_ids: Sequence[str], revisions: np.ndarray) -> list[int]:
        return [i for i, u in enumerate(user_ids) if self._revision.get(u, -1) < int(revisions[i])]

    def put(self, user_ids: Sequence[str], revisions: np.ndarray, rows: np.ndarray) -> int:
        keep = _latest(user_ids, revisions, self.newer(user_ids, revisions))
        if not keep:
            return 0
        self._rows.put([user_ids[i] for i in keep], rows[keep])
        for i in keep:  # after the rows: a reader that sees the revision finds the row
            self._revision[user_ids[i]] = int(revisions[i])
        return len(keep)

    def get(self, user_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        held = set(self._rows.known(user_ids))
        found = np.array([u in held for u in user_ids], dtype=bool)
        rows = np.zeros((len(user_ids), self.width), dtype=np.float32)
        if found.any():
            rows[found] = self._rows.get([u for u in user_ids if u in held])
        return found, rows

    def revisions(self) -> dict[str, int]:
        return dict(self._revision)

    def reserve(self, rows: int) -> None:
        self._rows.reserve(rows)

    def __len__(self) -> int:
        return len(self._rows)

    def save(self, folder: Path) -> None:
        self.start_save(folder)()

    def start_save(self, folder: Path) -> Callable[[], None]:
        ids, rows = self._rows.snapshot()
        revisions = np.array([self._revision.get(u, 0) for u in ids], dtype=np.int64)
        return lambda: np.savez(folder / USERS_FILE, ids=pack_strings(ids), revisions=revisions, rows=rows)

    @classmethod
    def load(cls, folder: Path, width: int) -> LocalUserStore:
        """The store saved in a checkpoint folder; empty when the checkpoint holds none (an older one).

        Raises:
            ArtifactError: the file does not load or its rows are not ``width`` wide.
        """
        store = cls(width)
        path = folder / USERS_FILE
        if not path.exists():
            return store
        try:
            with np.load(path, allow_pickle=False) as arrays:
                ids, revisions, rows = unpack_strings(arrays["ids"]), arrays["revisions"], arrays["rows"]
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{path}: user store does not load: {exc}") from None
        if rows.shape != (len(ids), width) or revisions.shape != (len(ids),):
            raise ArtifactError(f"{path}: rows {rows.shape} for {len(ids)} users; this version's are {width} wide")
        store.put(ids, revisions, rows)
        return store

    def drop(self) -> None:
        self._rows = RowTable(self.width)
        self._revision = {}

    def close(self) -> None:
        """Nothing held outside memory."""


def _latest(user_ids: Sequence[str], revisions: np.ndarray, positions: Sequence[int]) -> list[int]:
    """Of ``positions``, the one with the highest revision per user (a batch may hold a user twice)."""
    best: dict[str, int] = {}
    for i in positions:
        j = best.get(user_ids[i])
        if j is None or int(revisions[i]) >= int(revisions[j]):
            best[user_ids[i]] = i
    return sorted(best.values())
