"""Admin calls of canary and shadow trials (see :mod:`monorec.deployment.trials`): start, status (both versions'
online comparison per canvas and how users took their answers), promote, abort."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from monorec.deployment.control_plane import LIVE_WITHIN_S
from monorec.serving.messages import RecommendRequest

__all__ = ["TrialBody", "trial_routes"]


class TrialBody(BaseModel):
    version: str = Field(min_length=1, max_length=64)
    mode: Literal["canary", "shadow"] = "canary"
    share: float = Field(default=0.05, gt=0, le=1, description="canary: the share of requests the version answers")
    sticky_by: str = Field(
        default="user_id", min_length=1, max_length=64, description="the context field a share sticks to"
    )


def trial_status(request: Request) -> dict[str, Any]:
    """The running trial (or none), its comparison, the users' event rates per version, the last abort."""
    dep = request.app.state.deployment
    trial = dep.router.trial
    out: dict[str, Any] = {
        "trial": None if trial is None else dataclasses.asdict(trial),
        "serving": dep.control.pointer("serving"),
        "last_abort": dep.trials.last_abort,
    }
    if trial is not None:
        out["comparison"] = request.app.state.engine.trials.summary()
        out["event_rates"] = request.app.state.journal.rates_by_version(trial.started)
        # with replicas (`serve --workers N`) the traffic is theirs: each one's side of this trial
        key = [trial.version, trial.started]
        reports = {name: json.loads(body) for name, body in dep.control.reports("trial", LIVE_WITHIN_S).items()}
        out["replicas"] = {name: r for name, r in reports.items() if r.get("trial") == key}
    return out


def trial_routes(admin: Any) -> APIRouter:
    """The trial endpoints, each behind the ``admin`` dependency (the admin token)."""
    router = APIRouter(prefix="/v1/admin/trial", dependencies=[admin], tags=["admin"])

    @router.post("")
    def start(body: TrialBody, request: Request) -> dict[str, Any]:
        """Puts a ready (deployed, validated) version on canary or shadow trial beside the serving one."""
        request.app.state.deployment.trials.start(body.version, body.mode, body.share, body.sticky_by)
        return trial_status(request)

    @router.get("")
    def status(request: Request) -> dict[str, Any]:
        return trial_status(request)

    @router.post("/compare")
    def compare(body: RecommendRequest, request: Request) -> dict[str, Any]:
        """One request answered by the serving version and by the version on trial, side by side."""
        return dict(request.app.state.engine.trials.side_by_side(body))

    @router.post("/promote")
    def promote(request: Request) -> dict[str, Any]:
        """Switches to the version on trial (the serving one goes to standby)."""
        return {"serving": request.app.state.deployment.trials.promote()}

    @router.post("/abort")
    def abort(request: Request, reason: str = Query("aborted by an operator", max_length=500)) -> dict[str, Any]:
        """Ends the trial; every request goes to the serving version again. ``reason`` is logged and kept
        (a replica's trial guard sends why it aborts)."""
        trial = request.app.state.deployment.trials.abort(reason)
        return {"aborted": trial.version, "serving": request.app.state.deployment.control.pointer("serving")}

    return router
