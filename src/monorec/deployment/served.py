"""What the serving side reads of a deployment: the owner's (:class:`~monorec.deployment.Deployment`) or a
replica's (:class:`~monorec.deployment.replica.Replica`). The request path needs only this; lifecycle
operations (deploy, switch, trials, publishing) are the owner's alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from monorec.deployment.router import VersionRouter
from monorec.deployment.version import ServingVersion
from monorec.registry import Registry
from monorec.stream.catalogue import CatalogueStore

__all__ = ["ServedDeployment"]


class ServedDeployment(Protocol):
    root: Path  # the deployment folder (the owner's: a replica reads it)
    router: VersionRouter  # pins each request to one version
    versions: dict[str, ServingVersion]  # the versions this process holds
    catalogue: CatalogueStore  # titles, descriptions, users' stored states
    registry: Registry

    def status(self) -> list[dict[str, Any]]:
        """One row per version (state, entities, lag, in flight)."""
        ...

    def stream_status(self) -> dict[str, Any]:
        """The log's head, this process's consumer groups' lag and loaders' health, dead letters."""
        ...

    def unhealthy_loaders(self) -> dict[str, str]:
        """Consumer group -> why this process is not ready on it; empty when ready."""
        ...

    def fenced(self) -> str | None:
        """Why this process must answer no request now (a replica cut off from the control plane), or None."""
        ...
