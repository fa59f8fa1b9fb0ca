"""What loaders apply changes to: a deployed version (index, item features, lexical index and user store,
checkpointed together with the bulk cursors) and the catalogue store (changes and offset in one
transaction)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from monorec.config import ProjectConfig
from monorec.deployment.version import ItemEncodings, ServingVersion
from monorec.index import save_index
from monorec.stream.catalogue import CatalogueStore
from monorec.stream.changes import AnyChange, UserChange

__all__ = ["CatalogueSink", "VersionSink"]


class VersionSink:
    """Applies changes to a version and checkpoints its index, features, lexical index, user store and bulk
    cursors (entities, then users) together."""

    def __init__(self, version: ServingVersion, path: Path, config: ProjectConfig) -> None:
        self.version, self.path, self.config = version, path, config
        self.bulk_cursor = ""
        self.user_cursor = ""
        self._lock = threading.Lock()
        self._writes = 0  # changes applied (bulk rows included) since the last checkpoint
        self._saved: tuple[str, str, str] | None = None  # (offset, bulk cursors) of the last checkpoint

    def apply(self, changes: Sequence[AnyChange]) -> int:
        self._writes += len(changes)
        return self.version.apply(changes)

    def load_rows(self, page: pl.DataFrame, encoded: ItemEncodings | None = None) -> None:
        self._writes += page.height
        # a staging version serves nothing: its lexical index commits at the checkpoints (a tantivy commit
        # per page was 10% of the bulk pass), which every reader of the bulk load waits for
        self.version.load_rows(page, commit=False, encoded=encoded)

    def load_users(self, states: Sequence[UserChange], rows: np.ndarray | None = None) -> None:
        self._writes += len(states)
        self.version.load_users(states, rows)

    def checkpoint(self, offset: str) -> None:
        with self._lock:
            state = (offset, self.bulk_cursor, self.user_cursor)
            if self._saved == state and self._writes == 0:
                return  # nothing changed since the last checkpoint
            self._saved, self._writes = state, 0
            meta = {"version": self.version.name, "offset": offset, "bulk_cursor": self.bulk_cursor}
            save_index(
                self.version.index,
                self.path,
                spec=self.config.index,
                meta={**meta, "user_cursor": self.user_cursor, "users": len(self.version.users or ())},
                attach=self._attach,
            )

    def _attach(self, folder: Path) -> None:
        """The version's other stores, in the checkpoint beside the index (applied to the same offset:
        this loader's thread is the version's only writer)."""
        self.version.features.save(folder / "features.npz")
        self.version.sources.lexical.save(folder / "lexical")
        if self.version.users is not None:
            self.version.users.save(folder)


class CatalogueSink:
    """Applies changes to the catalogue store at once (one transaction per batch, so a change the store
    cannot take fails its own batch, where the loader isolates it) and records the offset at checkpoints.
    Between the two the store may be fresher than its offset says, never staler; a replay is harmless."""

    def __init__(self, store: CatalogueStore) -> None:
        self.store = store

    def apply(self, changes: Sequence[AnyChange]) -> int:
        return self.store.apply(changes)

    def checkpoint(self, offset: str) -> None:
        self.store.apply([], offset)
