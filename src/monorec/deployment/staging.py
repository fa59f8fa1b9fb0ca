"""Staging a version (steps 1-3 of :mod:`monorec.deployment.lifecycle`): opening its stores, fresh or from
its checkpoint, and the bulk pass that fills them from the catalogue and the users table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from monorec._failpoints import failpoint
from monorec.deployment.sinks import VersionSink
from monorec.deployment.version import ItemEncodings, ItemFeatures, ServingVersion
from monorec.index import create_index, load_index
from monorec.registry import Registry
from monorec.retrieval.lexical_backends import create_lexical, load_lexical
from monorec.stream.catalogue import CatalogueStore
from monorec.stream.changes import UserChange
from monorec.stream.loader import Loader
from monorec.users import create_user_store, load_user_store

__all__ = ["BULK_DONE", "IN_PROCESS", "BulkEncoder", "InProcessEncoder", "bulk_load", "open_version"]

BULK_DONE = "\U0010ffff"  # a bulk cursor after every possible id


class BulkEncoder(Protocol):
    """Where a bulk pass's pages come from, in id order after a cursor, ``size`` per page, each with its
    encodings when they were computed elsewhere (None: the version encodes the page itself)."""

    def entities(
        self, catalogue: CatalogueStore, after: str, size: int
    ) -> Iterator[tuple[pl.DataFrame, ItemEncodings | None]]:
        """Live entities, with their item-tower encodings."""
        ...

    def users(
        self, catalogue: CatalogueStore, after: str, size: int
    ) -> Iterator[tuple[list[UserChange], np.ndarray | None]]:
        """Users' states, with their rows of every user canvas (``monorec.users.encode.user_rows``, canvas-major)."""
        ...


class InProcessEncoder:
    """The in-process bulk pass: pages read from the catalogue store as they are needed, encoded by the
    version itself (:class:`monorec.distributed.RayBulkEmbedder` encodes them on Ray)."""

    def entities(self, catalogue: CatalogueStore, after: str, size: int) -> Iterator[tuple[pl.DataFrame, None]]:
        while (page := catalogue.page(after, size)).height:
            yield page, None
            after = str(page["entity_id"][-1])

    def users(self, catalogue: CatalogueStore, after: str, size: int) -> Iterator[tuple[list[UserChange], None]]:
        while states := catalogue.user_page(after, size):
            yield states, None
            after = states[-1].user_id


IN_PROCESS = InProcessEncoder()


def open_version(
    registry: Registry,
    catalogue: CatalogueStore,
    version: str,
    *,
    checkpoint: Path,
    lexical_path: Path,
    root: Path,
    fresh: bool,
) -> tuple[ServingVersion, dict[str, Any]]:
    """The version with its stores: from its checkpoint folder, or new and empty when ``fresh`` (see
    :mod:`monorec.retrieval.lexical_backends` for the lexical index, which works in ``lexical_path``).

    Returns:
        The version and its checkpoint's manifest (empty when fresh).

    Raises:
        ArtifactError: the checkpoint is missing, corrupt, or its stores disagree.
    """
    bundle = registry.load(version)
    spec = bundle.config.index
    user_width = ServingVersion.user_width(bundle)

    def title(entity_id: str) -> str | None:
        return catalogue.titles([entity_id]).get(entity_id)

    if fresh:
        dim = int(bundle.model_kwargs["retrieval_dim"])
        index = create_index(spec, dim, name=version, root=root)
        features = ItemFeatures(ServingVersion.feature_width(bundle))
        lexical = create_lexical(spec, index, lexical_path, lambda: catalogue.page("", 10_000))
        users = create_user_store(spec, version, user_width)
        return ServingVersion(version, bundle, index, features, title, lexical, users), {}
    index, manifest = load_index(checkpoint, spec=spec, name=version, root=root)
    features = ItemFeatures.load(checkpoint / "features.npz")
    lexical = load_lexical(spec, checkpoint / "lexical", index, lexical_path, int(manifest["entities"]))
    users = load_user_store(spec, checkpoint, version, user_width)
    return ServingVersion(version, bundle, index, features, title, lexical, users), manifest


def bulk_load(
    sv: ServingVersion,
    catalogue: CatalogueStore,
    loader: Loader,
    sink: VersionSink,
    *,
    progress: bool = False,
    progress_cb: Callable[[int], None] | None = None,
    encoder: BulkEncoder = IN_PROCESS,
) -> None:
    """Step 3: the catalogue paged in id order through ``sv``'s item tower, then every known user's state
    through its context tower (when it stores users), from the sink's bulk cursors on; the version's own
    log consumption interleaves (``loader.step()``) and checkpoints record both cursors, so a crash
    resumes after the last stored id. A checkpoint is due every ``checkpoint_batches`` batches once the
    work since the previous one is long enough for checkpoints to stay within ``checkpoint_max_share`` of
    the time (the last one's duration is the estimate of the next). ``encoder`` gives the pages and, where
    they were computed elsewhere, their encodings (:data:`IN_PROCESS`, or a Ray pool's:
    :mod:`monorec.distributed.bulk_embed`)."""
    spec = sv.bundle.config.deploy
    users = bool(sv.user_canvases)
    user_total = catalogue.user_count() if users else 0
    entity_total = catalogue.count()
    total = entity_total + user_total
    if sink.bulk_cursor != BULK_DONE:
        sv.features.reserve(entity_total)  # the feature rows at once: no doubling and copying as pages arrive
    bar = tqdm(total=total, desc=f"bulk-embedding {sv.name}", unit="row", disable=not progress)
    batches = 0
    worked_since = time.perf_counter()  # when the work since the last checkpoint began
    last_checkpoint_s = 0.0
    work_per_checkpoint = (1 - spec.checkpoint_max_share) / spec.checkpoint_max_share
    if not users:
        sink.user_cursor = BULK_DONE
    entities = encoder.entities(catalogue, sink.bulk_cursor, spec.batch_size) if sink.bulk_cursor != BULK_DONE else None
    users_pages = None  # opened once the entities are done
    while not sink.bulk_cursor == sink.user_cursor == BULK_DONE:  # entities first, then users
        if sink.bulk_cursor != BULK_DONE:
            assert entities is not None
            page, encoded = next(entities, (None, None))
            done = 0 if page is None else page.height
            if page is None:
                sink.bulk_cursor = BULK_DONE
            else:
                sink.load_rows(page, encoded)
                sink.bulk_cursor = str(page["entity_id"][-1])
        else:
            if users_pages is None:
                users_pages = encoder.users(catalogue, sink.user_cursor, spec.batch_size)
                if sv.users is not None:  # a row per (user canvas, user), their number known now
                    sv.users.reserve(user_total * len(sv.user_canvases))
            states, rows = next(users_pages, (None, None))
            done = 0 if states is None else len(states)
            if states is None:
                sink.user_cursor = BULK_DONE
            else:
                sink.load_users(states, rows)
                sink.user_cursor = states[-1].user_id
        bar.update(done)
        if progress_cb is not None and done:
            progress_cb(done)
        loader.step()  # changes made during the bulk load reach N+1 as it goes
        batches += 1
        now = time.perf_counter()
        due = batches % spec.checkpoint_batches == 0 and now - worked_since >= work_per_checkpoint * last_checkpoint_s
        if due or sink.user_cursor == BULK_DONE:
            loader.checkpoint(force=True)
            worked_since = time.perf_counter()
            last_checkpoint_s = worked_since - now
        failpoint("bulk_batch")
    bar.close()
