"""The embedding server's deployments: versions staged, validated, switched, drained and retired while
catalogue changes keep streaming in (DESIGN section 6).

A :class:`Deployment` owns one folder (a lock file makes it one process at a time; other processes talk to
the owner through the API)::

    control.sqlite      the control plane: each version's state, the serving pointers, dead letters
    catalogue.sqlite    the current catalogue, materialised from the change log (what bulk loads read)
    changes.sqlite      the embedded change log (unless a Redis stream is given)
    indexes/vNNNN/      each version's last checkpoint: vector index, item features, lexical index and
                        (local store) user encodings, checksummed together; offset and bulk cursors inside
    lexical/vNNNN/      each live version's working lexical index (started from its checkpoint's copy)

Deploying version N+1 under streaming:

1. subscribe: N+1's consumer group is created at the log's current head H0, BEFORE anything is loaded;
2. the catalogue catches up to at least H0, so the snapshot holds every change up to H0;
3. bulk load: the catalogue, paged in id order, is embedded with N+1's item tower into N+1's index,
   then every known user's state is encoded with N+1's context tower into N+1's user store (see
   :mod:`monorec.users`), interleaved with N+1's own log consumption; checkpoints record both bulk
   cursors, so a crash resumes after the last stored id (changes to ids already passed arrive through
   the log);
4. catch up and validate: catalogue and N+1 are brought to the same log offset; N+1's index must hold
   exactly the catalogue (every id at its latest revision), its user store every known user, load from its
   checkpoint with valid checksums,
   and answer canary queries with sane recall against exact search; otherwise the version is ``failed``;
5. switch: one control-plane transaction; in process, new requests pin N+1 at once, requests already on N
   finish there (drain); N stays on standby (fed by its loader) for rollback until it is retired.

Every step is idempotent and driven by the persisted state, so after a crash ``deploy`` again resumes.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from monorec._failpoints import failpoint
from monorec.artifacts import recover_dirs, verify_manifest
from monorec.deployment.checks import check_stores
from monorec.deployment.control_plane import LIVE_STATES, LIVE_WITHIN_S, ControlPlane, Deployed
from monorec.deployment.ownership import FolderLock
from monorec.deployment.router import VersionRouter
from monorec.deployment.sinks import CatalogueSink, VersionSink
from monorec.deployment.staging import IN_PROCESS, BulkEncoder, bulk_load, open_version
from monorec.deployment.status import stream_report, unhealthy, version_rows
from monorec.deployment.trial_control import TrialController
from monorec.deployment.version import ServingVersion
from monorec.errors import ArtifactError, DeployError
from monorec.index import release_local_indexes
from monorec.registry import Registry
from monorec.stream.catalogue import CatalogueStore
from monorec.stream.changes import AnyChange, UserChange
from monorec.stream.loader import Loader
from monorec.stream.log import ChangeLog
from monorec.stream.publish import open_log, publish_changes

__all__ = ["Deployment", "open_log", "publish_changes"]  # the last two re-exported from monorec.stream.publish

_log = logging.getLogger(__name__)

CATALOGUE_GROUP = "catalogue"
SERVING_ALIAS = "monorec_serving"  # Qdrant alias of the serving version's collection (readers outside monorec)


class Deployment:
    """One deployment folder: versions, their indexes and loaders, the change log and the router."""

    def __init__(
        self,
        root: str | Path,
        registry: Registry | str | Path,
        *,
        log: ChangeLog | None = None,
        progress: bool = False,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._owner = FolderLock(self.root)  # one process at a time (raises DeployError)
        try:
            self._open_stores(registry, log, progress)
        except BaseException:
            self._owner.release()  # nothing was started
            raise

    def _open_stores(self, registry: Registry | str | Path, log: ChangeLog | None, progress: bool) -> None:
        for action in recover_dirs(self.root / "indexes"):  # a crash mid-checkpoint: before anything reads them
            _log.warning("index checkpoints: %s", action)
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.control = ControlPlane(self.root / "control.sqlite")
        self.catalogue = CatalogueStore(self.root / "catalogue.sqlite")
        self.log: ChangeLog = log if log is not None else open_log(self.root)
        self.progress = progress
        self.router = VersionRouter()
        self.versions: dict[str, ServingVersion] = {}
        self.loaders: dict[str, Loader] = {}
        self._ops = threading.RLock()  # one lifecycle operation at a time
        self.trials = TrialController(self)  # canary and shadow trials of a ready version
        self._types: tuple[str, ...] | None = None
        self.log.subscribe(CATALOGUE_GROUP, "0")
        self._catalogue_loader = Loader(
            self.log,
            CATALOGUE_GROUP,
            CatalogueSink(self.catalogue),
            entity_types=self.entity_types(),
            dead_letter=self.control.add_dead_letter,
            checkpoint_s=0.0,
        )

    def announce(self, url: str) -> None:
        """Records that this owner serves the folder at ``url``, so the CLI asks it instead of refusing
        (see :mod:`monorec.deployment.ownership`); withdrawn by :meth:`close`."""
        self._owner.announce(url)

    # ------------------------------------------------------------------------------------- helpers

    def entity_types(self) -> tuple[str, ...]:
        """The declared entity types (of the newest published version; every version shares the schema)."""
        if self._types is None:
            versions = self.registry.versions()
            if not versions:
                raise DeployError(f"registry {self.registry.root} has no version yet; publish a model first")
            self._types = self.registry.config(versions[-1].version).entity_types
        return self._types

    def _index_path(self, version: str) -> Path:
        return self.root / "indexes" / version

    @staticmethod
    def _group(version: str) -> str:
        return f"index-{version}"

    def _loader_for(self, version: ServingVersion) -> tuple[Loader, VersionSink]:
        """The version's loader and the sink it feeds (whose bulk cursor the stage moves)."""
        sink = VersionSink(version, self._index_path(version.name), version.bundle.config)
        spec = version.bundle.config.deploy
        state = self.control.get(version.name)
        loader = Loader(
            self.log,
            self._group(version.name),
            sink,
            entity_types=version.bundle.config.entity_types,
            dead_letter=self.control.add_dead_letter,
            batch=spec.loader_batch,
            checkpoint_s=spec.loader_checkpoint_s,
            linger_s=spec.loader_linger_s,
            start_offset=state.start_offset if state is not None and state.start_offset else "0",
        )
        return loader, sink

    def _lexical_path(self, version: str) -> Path:
        return self.root / "lexical" / version

    def _open_version(self, version: str, *, fresh: bool) -> tuple[ServingVersion, dict[str, Any]]:
        """See :func:`monorec.deployment.staging.open_version`."""
        return open_version(
            self.registry,
            self.catalogue,
            version,
            checkpoint=self._index_path(version),
            lexical_path=self._lexical_path(version),
            root=self.root,
            fresh=fresh,
        )

    @staticmethod
    def _settle_gc(collect: bool = False) -> None:
        """Moves the long-lived state (indexes, vocabularies, revision books) out of the collector's
        generations: a full collection over it takes ~0.2 s at 100k entities and would stall requests at
        random. ``gc.freeze`` itself is O(1); the full collection first (``collect``) only runs at start,
        before traffic (it holds the GIL for that long)."""
        if collect:
            gc.unfreeze()
            gc.collect()
        gc.freeze()

    # --------------------------------------------------------------------------------- catalogue

    def seed_catalogue(self, catalogue: pl.DataFrame, revision: int = 0) -> int:
        """Loads an initial catalogue table into the store (before any deploy)."""
        return self.catalogue.seed(catalogue, revision)

    def seed_users(self, users: Sequence[UserChange]) -> int:
        """Loads users' initial states (profile, recent history; e.g. from the training logs) into the store
        that bulk passes read, where nothing newer is stored (before a deploy, like :meth:`seed_catalogue`)."""
        return self.catalogue.seed_users(users)

    def publish(self, changes: Sequence[AnyChange | dict[str, Any]]) -> list[str]:
        """Validates changes and appends them to the log; returns their offsets.

        Raises:
            ChangeError: a change is malformed (nothing of the batch is published).
        """
        return publish_changes(self.log, changes, self.entity_types())

    def sync_catalogue(self, target: str | None = None) -> None:
        """Brings the catalogue store up to ``target`` (default: the log's head)."""
        self._catalogue_loader.catch_up(target)

    # ---------------------------------------------------------------------------------- lifecycle

    def open(self, *, start_loaders: bool = True) -> Deployment:
        """Loads the serving and standby versions from their checkpoints, catches them up and starts their
        loaders (the state after a restart). Staging versions resume when ``deploy`` is called again."""
        with self._ops:
            for version in self.control.in_state("serving", "standby"):
                if version in self.versions:
                    continue
                sv, _ = self._open_version(version, fresh=False)
                self.versions[version] = sv
                loader, _ = self._loader_for(sv)
                loader.catch_up()
                self.loaders[version] = loader
                if self.control.get(version).state == "serving":  # type: ignore[union-attr]
                    self.router.switch(sv)
            if self.router.trial is None and self.router.current is not None:
                self.trials.resume()  # a trial the control plane records goes on after a restart
            if start_loaders:
                for loader in [self._catalogue_loader, *self.loaders.values()]:
                    if not loader.running:
                        loader.start()
            self._settle_gc(collect=True)
        return self

    def deploy(
        self,
        version: str,
        *,
        retire_previous: bool = False,
        progress_cb: Callable[[int], None] | None = None,
        encoder: BulkEncoder = IN_PROCESS,
    ) -> Deployed:
        """Stages, validates and switches to ``version`` (resuming wherever a previous attempt stopped);
        ``encoder``: where the bulk pass's encodings come from (see :meth:`stage`)."""
        with self._ops:
            self.check_deployable(version)
            state = self.control.get(version)
            if state is not None and state.state == "serving":
                return state
            if state is None or state.state in ("staging", "failed"):
                self.stage(version, progress_cb=progress_cb, encoder=encoder)
            self.switch(version)
            previous = self.control.pointer("previous")
            if retire_previous and previous is not None and previous != version:
                self.retire(previous)
            return self.control.get(version)  # type: ignore[return-value]

    def check_deployable(self, version: str) -> None:
        """Refuses up front what :meth:`deploy` would refuse: an unpublished or a retired version.

        Raises:
            DeployError: naming the reason.
        """
        if version not in {v.version for v in self.registry.versions()}:
            raise DeployError(f"{version} is not published in {self.registry.root}")
        state = self.control.get(version)
        if state is not None and state.state == "retired":
            raise DeployError(f"{version} was retired; publish a new version to deploy it again")

    def stage(
        self,
        version: str,
        *,
        progress_cb: Callable[[int], None] | None = None,
        encoder: BulkEncoder = IN_PROCESS,
    ) -> None:
        """Steps 1-4 of the module docstring; leaves the version ``ready`` (or ``failed``, raising).
        ``encoder``: the bulk pass's entities and users and their encodings, by default encoded in this
        process (:class:`monorec.distributed.RayBulkEmbedder` encodes them on a Ray cluster)."""
        with self._ops:
            self.registry.verify(version)
            state = self.control.get(version)
            if state is None or state.state == "failed":
                if state is not None:  # a new attempt starts from scratch
                    shutil.rmtree(self._index_path(version), ignore_errors=True)
                    with contextlib.suppress(KeyError):
                        self.log.drop(self._group(version))
                start = self.log.head()
                self.log.subscribe(self._group(version), start)  # 1. subscribe before loading anything
                self.control.set_state(version, "staging", start_offset=start)
            elif state.state != "staging":
                raise DeployError(f"{version} is {state.state}; only a new or staging version can be staged")
            state = self.control.get(version)
            assert state is not None and state.start_offset is not None
            failpoint("subscribed")
            self.sync_catalogue(state.start_offset)  # 2. the snapshot holds every change up to the start

            resume = (self._index_path(version) / "manifest.json").exists()
            sv, manifest = self._open_version(version, fresh=not resume)
            self.log.rewind(self._group(version))  # re-read what the last run applied after its checkpoint
            loader, sink = self._loader_for(sv)
            sink.bulk_cursor = str(manifest.get("bulk_cursor", ""))
            sink.user_cursor = str(manifest.get("user_cursor", ""))
            try:
                bulk_load(
                    sv, self.catalogue, loader, sink, progress=self.progress, progress_cb=progress_cb, encoder=encoder
                )
                loader.catch_up()
            except BaseException:
                loader.stop()  # a checkpoint it still writes ends before a retry opens the version again
                raise
            self.validate(version, sv, loader)
            self.versions[version] = sv
            self.loaders[version] = loader

    def validate(self, version: str, sv: ServingVersion, loader: Loader) -> None:
        """Marks the version ready, or failed (raising DeployError) when its index is not the catalogue.

        The catalogue and the version are compared at the SAME log offset: the catalogue's own loader
        pauses, then both are brought exactly to the log's head as of now (which nothing read beyond).
        """
        catalogue_was_running = self._catalogue_loader.running
        self._catalogue_loader.stop()
        try:
            target = self.log.head()
            self.sync_catalogue(target)
            loader.catch_up(target)
            loader.checkpoint(force=True)
            verify_manifest(self._index_path(version))  # the checkpoint is complete and its checksums hold
            failpoint("validating")
            check_stores(version, sv, self.catalogue)
        except (DeployError, ArtifactError) as exc:
            self.control.set_state(version, "failed", error=str(exc))
            raise DeployError(str(exc)) from None
        finally:
            if catalogue_was_running:
                self._catalogue_loader.start()
        self.control.set_state(version, "ready")

    def switch(self, version: str) -> None:
        """Atomically serves ``version`` (ready or standby); the old serving version drains to standby."""
        with self._ops:
            sv = self.load_ready(version)
            previous_name = self.control.pointer("serving")
            failpoint("switching")
            previous = self.router.switch(sv)
            self.control.switch(version, previous_name if previous_name != version else None)
            trial = self.router.trial
            if trial is not None and trial.version in (version, previous_name):  # the trial's question is settled
                self.trials.end()
            set_alias = getattr(sv.index, "set_alias", None)
            if set_alias is not None:  # Qdrant: external readers follow the alias
                set_alias(SERVING_ALIAS)
            self._await_replicas(version, sv.bundle.config.deploy.replica_ack_s)
            if previous is not None and previous is not sv:
                VersionRouter.drain(previous, sv.bundle.config.deploy.drain_timeout_s)
            failpoint("switched")
            for older in self.control.in_state("standby"):  # keep one rollback target
                if older != previous_name:
                    self.retire(older)
            self._settle_gc()

    def _await_replicas(self, version: str, timeout_s: float) -> None:
        """Waits until every live replica (``monorec.deployment.replica``) serves ``version``, so that no
        request begun after the switch returns is answered by the old one; a replica that takes longer
        than ``timeout_s`` (still loading the version, stuck) is logged and left behind."""
        deadline = time.monotonic() + timeout_s
        while True:
            behind = [r.name for r in self.control.replicas(LIVE_WITHIN_S) if r.serving != version]
            if not behind:
                return
            if time.monotonic() >= deadline:
                _log.warning("switch to %s: replicas %s do not serve it after %.0f s", version, behind, timeout_s)
                return
            time.sleep(0.01)

    def load_ready(self, version: str) -> ServingVersion:
        """A ready, standby or serving version in memory with its loader running (after a restart a ready
        one is reloaded from its checkpoint, caught up and validated again).

        Raises:
            DeployError: the version is in another state, or its checkpoint cannot serve (it is then failed).
        """
        with self._ops:
            state = self.control.get(version)
            if state is None or state.state not in ("ready", "standby", "serving"):
                current = "not deployed" if state is None else state.state
                raise DeployError(f"{version} is {current}; only a ready or standby version can serve")
            if version not in self.versions:
                try:
                    sv, _ = self._open_version(version, fresh=False)
                except ArtifactError as exc:
                    self.control.set_state(version, "failed", error=str(exc))
                    raise DeployError(f"{version} cannot serve: {exc}") from None
                loader, _ = self._loader_for(sv)
                self.validate(version, sv, loader)
                self.versions[version], self.loaders[version] = sv, loader
            if not self.loaders[version].running:
                self.loaders[version].start()
            return self.versions[version]

    @contextlib.contextmanager
    def lifecycle(self) -> Iterator[None]:
        """One lifecycle operation at a time (deploy, switch, trial changes, retire)."""
        with self._ops:
            yield

    def rollback(self) -> str:
        """Serves the previous version again (while it is kept on standby); returns its name."""
        with self._ops:
            previous = self.control.pointer("previous")
            state = None if previous is None else self.control.get(previous)
            if previous is None or state is None or state.state != "standby":
                raise DeployError("nothing to roll back to: no previous version is on standby")
            self.switch(previous)
            return previous

    def retire(self, version: str) -> None:
        """Frees a version that does not serve: stops its loader, drops its group, index and files."""
        with self._ops:
            state = self.control.get(version)
            if state is None:
                raise DeployError(f"{version} is not deployed")
            if state.state == "serving":
                raise DeployError(f"{version} is serving; switch to another version before retiring it")
            trial = self.router.trial
            if trial is not None and trial.version == version:
                raise DeployError(f"{version} is on {trial.mode} trial; abort the trial before retiring it")
            loader = self.loaders.pop(version, None)
            if loader is not None:
                loader.stop()
            sv = self.versions.pop(version, None)
            if sv is not None:
                VersionRouter.drain(sv, sv.bundle.config.deploy.drain_timeout_s)
                sv.stop_writes()
                sv.index.drop()
                if sv.users is not None:
                    sv.users.drop()
                sv.sources.close()  # before its working folder goes
            elif state.state in LIVE_STATES or state.state == "failed":
                with contextlib.suppress(ArtifactError):
                    opened = self._open_version(version, fresh=False)[0]
                    opened.index.drop()
                    if opened.users is not None:
                        opened.users.drop()
            with contextlib.suppress(KeyError):
                self.log.drop(self._group(version))
            shutil.rmtree(self._index_path(version), ignore_errors=True)
            shutil.rmtree(self._lexical_path(version), ignore_errors=True)
            self.control.set_state(version, "retired")

    # ------------------------------------------------------------------------------------- status

    def status(self) -> list[dict[str, Any]]:
        """One row per deployed version: state, entities, loader lag, requests in flight (see
        :func:`monorec.deployment.status.version_rows`)."""
        return version_rows(
            self.control, self.versions, self.loaders, self.log, group=self._group, checkpoint=self._index_path
        )

    def _all_loaders(self) -> dict[str, Loader]:
        """Consumer group -> the loader this process runs for it (the catalogue's and each live version's)."""
        return {CATALOGUE_GROUP: self._catalogue_loader, **{self._group(v): ld for v, ld in list(self.loaders.items())}}

    def unhealthy_loaders(self) -> dict[str, str]:
        """Consumer group -> why its loader does not apply changes; empty when every loader of this process
        is well. Readiness depends on it."""
        return unhealthy(self._all_loaders())

    def fenced(self) -> str | None:
        """Never: the owner is the control plane's writer (see :meth:`Replica.fenced`)."""
        return None

    def stream_status(self) -> dict[str, Any]:
        """The change log's head, lags, loaders' health and dead letters (see
        :func:`monorec.deployment.status.stream_report`)."""
        return stream_report(self.control, self.log, self._all_loaders())

    def close(self) -> None:
        """Stops every loader (each checkpoints first) and releases the folder (again: a no-op)."""
        if not self._owner.held:
            return
        for loader in [self._catalogue_loader, *self.loaders.values()]:
            loader.stop()
        for sv in self.versions.values():
            sv.close()
        self.loaders.clear()
        self.versions.clear()
        self.log.close()
        release_local_indexes(self.root)
        self._owner.release()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
