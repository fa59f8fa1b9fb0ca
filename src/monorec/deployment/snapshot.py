"""One live version of a deployment, read from the owner's newest checkpoint and frozen there: what a batch
job (the precomputed tables, :mod:`monorec.serving.precomputed`) scores with while the owner keeps serving,
streaming and checkpointing.

A :class:`VersionSnapshot` is a :class:`~monorec.deployment.served.ServedDeployment` holding ONE version and no
loader: it follows neither the change log nor the control plane, writes nothing the owner reads and does not
count as a replica (a switch never waits for it). Its answers are those of the version as of its checkpoint
(a few seconds behind the log under streaming), which is what a batch job that trades freshness for cost
asks for. :func:`load_checkpoint` is the loading step it shares with a replica.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from monorec.artifacts import link_snapshot
from monorec.deployment.control_plane import ControlPlane
from monorec.deployment.router import VersionRouter
from monorec.deployment.staging import open_version
from monorec.deployment.version import ServingVersion
from monorec.errors import DeployError
from monorec.registry import Registry
from monorec.stream.catalogue import CatalogueStore

__all__ = ["LIVE_STATES", "VersionSnapshot", "live_version", "load_checkpoint"]

LIVE_STATES = ("ready", "serving", "standby")  # versions with a complete checkpoint that may serve (again)


def load_checkpoint(
    root: Path, registry: Registry, catalogue: CatalogueStore, version: str, work: Path
) -> tuple[ServingVersion, dict[str, Any]]:
    """``version`` from the owner's newest checkpoint under ``root``, into this process's memory.

    The owner replaces its checkpoint every few seconds while changes stream, so a snapshot of hard links is
    taken first (``work/checkpoints/VERSION``); the lexical index's working copy lives in
    ``work/lexical/VERSION``. With a Qdrant index the owner's collection is searched (this copy follows it).

    Returns:
        The version and its checkpoint's manifest (``offset``: the last log entry it holds).

    Raises:
        ArtifactError: the checkpoint is missing, torn or corrupt.
    """
    lexical = work / "lexical" / version
    shutil.rmtree(lexical, ignore_errors=True)  # a previous incarnation's copy: the checkpoint is the truth
    checkpoint = work / "checkpoints" / version
    link_snapshot(root / "indexes" / version, checkpoint, verify=False)  # open_version verifies it
    shared = registry.config(version).index.kind == "qdrant"  # the owner's collection, read here
    sv, manifest = open_version(
        registry,
        catalogue,
        version,
        checkpoint=checkpoint,
        lexical_path=lexical,
        root=root if shared else work,  # where a local-mode Qdrant keeps the owner's collections
        fresh=False,
    )
    if shared:
        from monorec.index.qdrant_index import QdrantIndex  # the optional engine, imported when configured

        assert isinstance(sv.index, QdrantIndex)
        sv.index.follow_only()  # the owner writes the vectors (and sparse vectors); this copy follows
    return sv, manifest


def live_version(root: Path, version: str | None = None) -> str:
    """``version`` if it is live in the deployment folder ``root`` (ready, serving or standby), or by
    default the version serving now.

    Raises:
        DeployError: not a deployment folder, nothing serves, or ``version`` is not live.
    """
    if not (root / "control.sqlite").exists():
        raise DeployError(f"{root} is not a deployment folder (no control.sqlite); deploy a version first")
    control = ControlPlane(root / "control.sqlite")
    name = version or control.pointer("serving")
    if name is None:
        raise DeployError(f"{root}: no version serves; name one (ready, serving or standby)")
    deployed = control.get(name)
    if deployed is None or deployed.state not in LIVE_STATES:
        state = "not deployed" if deployed is None else deployed.state
        raise DeployError(f"{name} is {state} in {root}: only {', '.join(LIVE_STATES)} versions have a checkpoint")
    return name


class VersionSnapshot:
    """A live version of the deployment folder ``root`` (owned by another process), frozen at its newest
    checkpoint.

    Args:
        root: the owner's deployment folder.
        registry: the model registry (the version's bundle).
        version: a ready, serving or standby version (default: the one serving now).
        work: where the snapshot's files go, on the folder's filesystem (default: a new folder under
            ``root/snapshots/``, removed by :meth:`close`).

    Raises:
        DeployError: not a deployment folder, nothing serves, or ``version`` is not live.
        ArtifactError: its checkpoint cannot be read.
    """

    def __init__(
        self, root: str | Path, registry: Registry | str | Path, version: str | None = None, *, work: Path | None = None
    ) -> None:
        self.root = Path(root)
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        name = live_version(self.root, version)
        self._own_work = work is None
        if work is None:  # beside the checkpoints: a snapshot is hard links, which cannot cross filesystems
            (self.root / "snapshots").mkdir(exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root / "snapshots"))
        self.work = Path(work)
        self.catalogue = CatalogueStore(self.root / "catalogue.sqlite")
        try:
            sv, manifest = load_checkpoint(self.root, self.registry, self.catalogue, name, self.work)
        except BaseException:
            self._remove_work()
            raise
        self.version, self.offset = sv, str(manifest.get("offset") or "0")
        self.versions: dict[str, ServingVersion] = {name: sv}
        self.router = VersionRouter()
        self.router.switch(sv)

    def status(self) -> list[dict[str, Any]]:
        sv = self.version
        return [
            {
                "version": sv.name,
                "state": "snapshot",
                "entities": len(sv.index),
                "lag": None,
                "in_flight": sv.in_flight,
                "applied_offset": self.offset,
            }
        ]

    def stream_status(self) -> dict[str, Any]:
        return {"head": None, "lag": {}, "loaders": {}, "dead_letters": 0, "recent_dead_letters": []}

    def unhealthy_loaders(self) -> dict[str, str]:
        return {}  # no loader: frozen at the checkpoint by design

    def fenced(self) -> str | None:
        return None  # one version, no switch to miss

    def close(self) -> None:
        self.version.close()
        self._remove_work()

    def _remove_work(self) -> None:
        if self._own_work:
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> VersionSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
