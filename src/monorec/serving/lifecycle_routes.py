"""Admin calls of the deployment's lifecycle (see :mod:`monorec.deployment.lifecycle`): the versions and
their states, a deploy run in the background, switch, rollback, retire, and the change stream's status."""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from monorec.deployment import Deployment
from monorec.errors import DeployError

__all__ = ["DeployJob", "VersionBody", "lifecycle_routes"]


class VersionBody(BaseModel):
    version: str = Field(min_length=1, max_length=64)


class DeployJob:
    """The one deploy that may run in the background (deploys take minutes; requests keep flowing)."""

    def __init__(self) -> None:
        self.version: str | None = None
        self.state = "idle"
        self.error: str | None = None
        self.thread: threading.Thread | None = None

    def start(self, deployment: Deployment, version: str) -> None:
        if self.thread is not None and self.thread.is_alive():
            raise DeployError(f"a deploy of {self.version} is running; wait for it to finish")
        self.version, self.state, self.error = version, "running", None

        def run() -> None:
            try:
                deployment.deploy(version)
                self.state = "done"
            except Exception as exc:
                self.state, self.error = "failed", str(exc)

        self.thread = threading.Thread(target=run, name=f"monorec-deploy-{version}", daemon=True)
        self.thread.start()

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "state": self.state, "error": self.error}


def lifecycle_routes(admin: Any) -> APIRouter:
    """The routes, behind the ``admin`` dependency (the admin token); they reach the owner's
    :class:`Deployment` (``app.state.deployment``) and its :class:`DeployJob` (``app.state.deploy_job``)."""
    router = APIRouter(prefix="/v1/admin", dependencies=[admin], tags=["admin"])

    @router.get("/versions")
    def versions(request: Request) -> dict[str, Any]:
        dep: Deployment = request.app.state.deployment
        published = [v.version for v in dep.registry.versions()]
        return {"deployed": dep.status(), "published": published, "deploy": request.app.state.deploy_job.to_dict()}

    @router.post("/deploy", status_code=202)
    def deploy(body: VersionBody, request: Request) -> dict[str, Any]:
        """Starts deploying a published version (bulk load, validation, switch) in the background."""
        dep: Deployment = request.app.state.deployment
        if body.version not in {v.version for v in dep.registry.versions()}:
            raise HTTPException(404, f"unknown version {body.version!r}")
        dep.check_deployable(body.version)  # a retired version: 409 now, not a failure in the background
        request.app.state.deploy_job.start(dep, body.version)
        return request.app.state.deploy_job.to_dict()

    @router.post("/switch")
    def switch(body: VersionBody, request: Request) -> dict[str, Any]:
        request.app.state.deployment.switch(body.version)
        return {"serving": body.version}

    @router.post("/rollback")
    def rollback(request: Request) -> dict[str, Any]:
        return {"serving": request.app.state.deployment.rollback()}

    @router.post("/retire")
    def retire(body: VersionBody, request: Request) -> dict[str, Any]:
        request.app.state.deployment.retire(body.version)
        return {"retired": body.version}

    @router.get("/stream")
    def stream(request: Request) -> dict[str, Any]:
        return request.app.state.deployment.stream_status()

    return router
