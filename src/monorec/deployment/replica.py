"""A serving replica: a read-only copy of a deployment that another process owns (issue 13, DESIGN section 8).

The owner (:class:`~monorec.deployment.Deployment`) runs the lifecycle: it stages, validates, switches,
retires, checkpoints every live version and feeds the catalogue store. A :class:`Replica` only answers
requests. For each version the control plane calls ready, serving or standby it::

    1. loads the version's newest checkpoint from the owner's folder (read only: index, item features,
       lexical index, user encodings, checksummed together) into its own memory, through a snapshot of
       hard links (the owner swaps in a new checkpoint every few seconds while changes stream);
    2. consumes the change log itself from the checkpoint's offset on, through a consumer group of its
       own (``replica-NAME-vNNNN``, reset to that offset at every load, so a restarted replica never skips
       what came after the checkpoint it loaded);
    3. follows the control plane's ``serving`` pointer (switches and rollbacks) within ``poll_s``, and
       frees the versions the owner retired;
    4. says which version it serves through a heartbeat in the control plane (at every change, and every
       ``HEARTBEAT_S``): the owner's switch returns once every live replica serves the new version, so a
       request that begins after a switch returned is never answered by the old one. A replica silent
       for long enough to be taken for dead (its process stalled, the control plane out of reach) fences
       itself: it refuses requests (503, not ready) until it has followed the control plane again.

Requests pin one version here as in the owner (the same :class:`VersionRouter`). A replica writes nothing
the owner reads but its heartbeat and the reports that ride on it (:attr:`Replica.reporters`, e.g. its
side of a trial): its checkpoints are no-ops (after a crash it starts again from the
owner's newest one) and its lexical working copies live under ``replicas/NAME/``. It reports its applied
offset per version, and a replica whose loaders lag more than ``max_lag`` entries behind the log reports
not ready.

The replicas of one host each hold their own copy of the vectors of a faiss-indexed version; replicas on
several hosts share the deployment folder (a network filesystem or a synced copy of ``indexes/`` and
``control.sqlite``) and the Redis change log. With a Qdrant index (``index.kind = "qdrant"``) every replica
searches the owner's collection of the version (the owner alone writes it, dense and sparse vectors; a
replica's index keeps only the revision book in step) and holds its own item features; an entity the
owner indexed before the replica stored its features is left out of that answer (the gather stage ranks
what it holds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monorec.deployment.control_plane import HEARTBEAT_S, LIVE_WITHIN_S, ControlPlane
from monorec.deployment.router import VersionRouter
from monorec.deployment.snapshot import LIVE_STATES, load_checkpoint
from monorec.deployment.trials import Trial
from monorec.deployment.version import ServingVersion
from monorec.errors import ArtifactError, DeployError
from monorec.registry import Registry
from monorec.stream.catalogue import CatalogueStore
from monorec.stream.changes import AnyChange
from monorec.stream.loader import Loader
from monorec.stream.log import ChangeLog
from monorec.stream.publish import open_log

__all__ = ["REPLICA_STATES", "Replica", "ReplicaSink"]

_log = logging.getLogger(__name__)

REPLICA_STATES = LIVE_STATES  # versions a replica holds: what may serve, or serve again
# A switch waits only for the replicas heard from within LIVE_WITHIN_S: one silent that long (its process
# stalled, the control plane unreachable) may have been left behind. It refuses requests once silent for
# this long (a margin of two heartbeats below that bound, for the two clocks), and again until it has
# followed the control plane after its silence: it never answers with a version switched away from.
FENCE_S = LIVE_WITHIN_S - 2 * HEARTBEAT_S


class ReplicaSink:
    """Applies changes to a replica's copy of a version. Durability is the owner's: a checkpoint here is a
    no-op, and a restarted replica loads the owner's newest checkpoint and replays the log from its offset."""

    def __init__(self, version: ServingVersion) -> None:
        self.version = version

    def apply(self, changes: Sequence[AnyChange]) -> int:
        return self.version.apply(changes)

    def checkpoint(self, offset: str) -> None:
        del offset  # nothing of a replica is durable


class Replica:
    """Serves the live versions of the deployment folder ``root`` (owned by another process) read-only.

    Args:
        root: the owner's deployment folder.
        registry: the model registry (versions' bundles).
        name: this replica's name, unique among the deployment's replicas and stable across its restarts
            (its consumer groups and working folder are named after it).
        log: the change log (default: the folder's embedded log; a Redis stream for replicas on many hosts).
        max_lag: log entries a version may be behind before this replica reports not ready.
        poll_s: how often the control plane is read.
    """

    def __init__(
        self,
        root: str | Path,
        registry: Registry | str | Path,
        *,
        name: str,
        log: ChangeLog | None = None,
        max_lag: int = 1_000,
        poll_s: float = 0.1,
    ) -> None:
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise DeployError(f"replica name {name!r}: letters, digits, '-' and '_' only")
        self.root, self.name = Path(root), name
        if not (self.root / "control.sqlite").exists():
            raise DeployError(f"{self.root} is not a deployment folder (no control.sqlite); deploy a version first")
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.control = ControlPlane(self.root / "control.sqlite")
        self.catalogue = CatalogueStore(self.root / "catalogue.sqlite")
        self.log: ChangeLog = log if log is not None else open_log(self.root)
        self.max_lag, self.poll_s = max_lag, poll_s
        self.work = self.root / "replicas" / name
        self.router = VersionRouter()
        self.versions: dict[str, ServingVersion] = {}
        self.loaders: dict[str, Loader] = {}
        self.error: str | None = None  # why the last follow step failed (None once one succeeds)
        self._ops = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._said: tuple[str | None, float] = (None, float("-inf"))  # the last heartbeat: serving, when
        self._fenced_since: float | None = None  # silent for FENCE_S: refusing until a follow begun after this
        self._saying = threading.Lock()
        self._beats: threading.Thread | None = None
        # where this replica's trial guard sends an abort (``serving.owner_proxy.OwnerTrials``: the owner's
        # admin API); None: a breach seen here is only logged
        self.trials: Any = None
        # kind -> what this replica reports to the owner with each heartbeat (JSON-able; the serving app
        # registers its side of a running trial), read by the owner through ControlPlane.reports
        self.reporters: dict[str, Callable[[], Any]] = {}

    # ----------------------------------------------------------------------------------- following

    def _group(self, version: str) -> str:
        return f"replica-{self.name}-{version}"

    def _load(self, version: str) -> None:
        """Loads ``version`` from the owner's checkpoint, replays the log from its offset, starts its loader."""
        sv, manifest = load_checkpoint(self.root, self.registry, self.catalogue, version, self.work)
        offset = str(manifest.get("offset") or "0")
        group = self._group(version)
        if group in self.log.groups():
            self.log.drop(group)
        self.log.subscribe(group, offset)
        spec = sv.bundle.config.deploy
        loader = Loader(
            self.log,
            group,
            ReplicaSink(sv),
            entity_types=sv.bundle.config.entity_types,
            dead_letter=self._rejected,
            batch=spec.loader_batch,
            checkpoint_s=spec.loader_checkpoint_s,
            linger_s=spec.loader_linger_s,
            start_offset=offset,
        )
        loader.catch_up()
        loader.start()
        self.versions[version], self.loaders[version] = sv, loader
        _log.info("replica %s: %s loaded at offset %s", self.name, version, loader.applied_offset or offset)

    def _rejected(self, consumer: str, offset: str, payload: str, reason: str) -> None:
        """A record no version can apply: the owner's loaders dead-letter it; a replica only logs it."""
        del payload
        _log.warning("replica %s: %s skips the change at %s: %s", self.name, consumer, offset, reason)

    def _unload(self, version: str) -> None:
        """Frees a version no longer live: its loader, consumer group, copy and files; it leaves
        :attr:`versions` last, so whoever sees it gone sees everything of it gone."""
        loader, sv = self.loaders[version], self.versions[version]
        loader.stop()
        with contextlib.suppress(KeyError):
            self.log.drop(loader.group)
        VersionRouter.drain(sv, sv.bundle.config.deploy.drain_timeout_s)
        sv.close()
        shutil.rmtree(self.work / "lexical" / version, ignore_errors=True)
        shutil.rmtree(self.work / "checkpoints" / version, ignore_errors=True)
        del self.loaders[version], self.versions[version]

    def follow(self) -> None:
        """One pass over the control plane: load what may serve, serve what the owner serves, free the
        rest. Idempotent; a version whose checkpoint cannot be read now is tried again on the next pass."""
        with self._ops:
            began = time.monotonic()
            states = {d.version: d.state for d in self.control.all()}
            for version, state in states.items():
                if state in REPLICA_STATES and version not in self.versions:
                    try:
                        self._load(version)
                    except ArtifactError as exc:  # the owner is replacing that checkpoint, or it failed
                        _log.warning("replica %s: %s not loadable yet: %s", self.name, version, exc)
            serving = self.control.pointer("serving")
            current = self.router.current
            if serving in self.versions and (current is None or current.name != serving):
                previous = self.router.switch(self.versions[serving])
                _log.info("replica %s: now serving %s", self.name, serving)
                if previous is not None:
                    VersionRouter.drain(previous, previous.bundle.config.deploy.drain_timeout_s)
            self._follow_trial()
            for version in list(self.versions):
                if states.get(version) not in REPLICA_STATES and version != serving:
                    self._unload(version)
            self._heartbeat()
            fenced = self._fenced_since
            if fenced is not None and began >= fenced:  # what it serves now was read after its silence
                self._fenced_since = None
                _log.info("replica %s: heard from the control plane again; serving %s", self.name, serving)

    def _follow_trial(self) -> None:
        """Routes a canary's share (and shadows) as the owner does, while the owner's trial runs."""
        saved = self.control.setting("trial")
        trial = None if saved is None else Trial.from_json(saved)
        if trial is not None and trial.version in self.versions:
            if self.router.trial != trial:
                self.router.set_trial(self.versions[trial.version], trial)
                _log.info("replica %s: %s on %s trial", self.name, trial.version, trial.mode)
        elif self.router.trial is not None:
            self.router.clear_trial()

    def _heartbeat(self) -> None:
        """Says which version this replica serves, when it changed or ``HEARTBEAT_S`` after the last time.
        Called by :meth:`follow` (at once after a switch) and by its own thread, so a replica busy loading a
        large version (seconds) is still alive to the owner, whose switch then waits for it."""
        with self._saying:
            current = self.router.current
            serving = None if current is None else current.name
            now = time.monotonic()
            if serving != self._said[0] or now - self._said[1] >= HEARTBEAT_S:
                self.control.heartbeat(self.name, os.getpid(), serving)
                for kind, report in list(self.reporters.items()):
                    self.control.put_report(self.name, kind, json.dumps(report()))
                if now - self._said[1] > FENCE_S and self._said[1] > float("-inf"):
                    self._fence(now)  # heard again after a silence a switch may have left it behind in
                self._said = (serving, now)

    def _fence(self, since: float) -> None:
        if self._fenced_since is None:
            self._fenced_since = since
            _log.warning("replica %s: silent to the control plane over %.1f s; refusing requests", self.name, FENCE_S)

    def fenced(self) -> str | None:
        """Why this replica must not answer now, or None: silent to the control plane for over
        :data:`FENCE_S` (a switch may have gone on without it), until it has followed the control plane
        again. The serving engine answers 503 meanwhile; readiness fails."""
        if time.monotonic() - self._said[1] > FENCE_S and self._said[1] > float("-inf"):
            self._fence(time.monotonic())
        if self._fenced_since is None:
            return None
        return f"replica {self.name} lost the control plane (silent over {FENCE_S:.1f} s), not followed since"

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S / 2):
            try:
                self._heartbeat()
            except Exception:  # the control plane busy or away: the next beat tries again
                _log.exception("replica %s: heartbeat failed", self.name)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.follow()
                self.error = None
            except Exception as exc:  # reported through readiness and retried: the thread must not die
                if self.error is None:
                    _log.exception("replica %s: following the control plane failed; retrying", self.name)
                self.error = f"{type(exc).__name__}: {exc}"

    # ----------------------------------------------------------------- what the serving app calls

    def open(self) -> Replica:
        """Loads the live versions, serves the owner's serving version, then follows the control plane."""
        self.follow()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"replica-{self.name}", daemon=True)
            self._thread.start()
            self._beats = threading.Thread(target=self._beat, name=f"replica-{self.name}-heartbeat", daemon=True)
            self._beats.start()
        return self

    def applied_offsets(self) -> dict[str, str | None]:
        """Version -> the last log offset applied to this replica's copy."""
        return {v: loader.applied_offset or loader.start_offset for v, loader in list(self.loaders.items())}

    def unhealthy_loaders(self) -> dict[str, str]:
        """Consumer group -> why this replica is not ready on it: a failing loader, or a lag beyond the bound."""
        out = {}
        for loader in list(self.loaders.values()):
            if not loader.healthy:
                out[loader.group] = loader.error or "the loader thread stopped"
            else:
                lag = loader.lag()
                if lag > self.max_lag:
                    out[loader.group] = f"{lag} log entries behind (bound {self.max_lag})"
        if self.error is not None:
            out["control-plane"] = self.error
        fenced = self.fenced()
        if fenced is not None:
            out["control-plane"] = fenced
        return out

    def status(self) -> list[dict[str, Any]]:
        """One row per version this replica holds: the owner's state, entities, lag, applied offset."""
        states = {d.version: d for d in self.control.all()}
        rows = []
        for version, sv in sorted(self.versions.items()):
            loader = self.loaders[version]
            d = states.get(version)
            rows.append(
                {
                    "version": version,
                    "state": d.state if d is not None else "unknown",
                    "entities": len(sv.index),
                    "lag": loader.lag(),
                    "in_flight": sv.in_flight,
                    "applied_offset": loader.applied_offset or loader.start_offset,
                    "replica": self.name,
                    "start_offset": d.start_offset if d is not None else None,
                    "error": d.error if d is not None else None,
                }
            )
        return rows

    def stream_status(self) -> dict[str, Any]:
        """The log's head, this replica's groups' lag and loaders' health (the owner reports dead letters)."""
        loaders = {loader.group: loader for loader in list(self.loaders.values())}
        return {
            "head": self.log.head(),
            "lag": {g: loader.lag() for g, loader in loaders.items()},
            "loaders": {g: loader.health() for g, loader in loaders.items()},
            "dead_letters": len(self.control.dead_letters()),
            "recent_dead_letters": [],
            "replica": self.name,
        }

    def close(self) -> None:
        """Stops following and every loader; frees the copies (the owner's folder is left as it was)."""
        self._stop.set()
        for thread in (self._thread, self._beats):
            if thread is not None:
                thread.join(timeout=30)
        self._thread = self._beats = None
        with self._ops:
            self.control.forget_replica(self.name)  # first: a switch meanwhile does not wait for it
            for version in list(self.versions):
                self._unload(version)
        self.log.close()

    def __enter__(self) -> Replica:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
