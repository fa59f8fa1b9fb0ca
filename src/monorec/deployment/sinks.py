"""What loaders apply changes to: a deployed version (index, item features, lexical index and user store,
checkpointed together with the bulk cursors) and the catalogue store (changes and offset in one
transaction)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from monorec.config import ProjectConfig
from monorec.deployment.version import ItemEncodings, ServingVersion
from monorec.index import start_save_index
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
        finish = self.start_checkpoint(offset)
        if finish is not None:
            finish()

    def start_checkpoint(self, offset: str) -> Callable[[], None] | None:
        """Captures the version's stores as they are now, all at one moment (the loader's thread is their
        only writer and waits for this call), and returns the function that writes the capture into the
        checkpoint folder (the offset commits once it returns). None when nothing changed since the last
        checkpoint. The capture is cheap (the index and tables copied in memory while searches go on, the
        lexical index's files hard-linked): the loader goes on applying while another thread writes."""
        with self._lock:
            state = (offset, self.bulk_cursor, self.user_cursor)
            if self._saved == state and self._writes == 0:
                return None  # nothing changed since the last checkpoint
            self._saved, self._writes = state, 0
            meta = {"version": self.version.name, "offset": offset, "bulk_cursor": self.bulk_cursor}
            try:
                write = start_save_index(
                    self.version.index,
                    self.path,
                    spec=self.config.index,
                    meta={**meta, "user_cursor": self.user_cursor, "users": len(self.version.users or ())},
                    attach=self._attach,
                )
            except BaseException:
                self._saved = None
                raise

        def finish() -> None:
            try:
                write()
            except BaseException:
                with self._lock:
                    self._saved = None  # the next checkpoint writes even if nothing changed meanwhile
                raise

        return finish

    def _attach(self, folder: Path) -> list[Callable[[], None]]:
        """The version's other stores, in the checkpoint beside the index (captured at the same offset:
        the loader's thread is the version's only writer)."""
        self.version.sources.lexical.save(folder / "lexical")
        writes = [self.version.features.start_save(folder / "features.npz")]
        if self.version.users is not None:
            writes.append(self.version.users.start_save(folder))
        return writes


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
