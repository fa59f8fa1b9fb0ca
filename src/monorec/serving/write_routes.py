"""Writes through the change log and users' events: entities upserted and deleted, users' profiles
replaced (the admin token), events recorded in the feedback journal (the events token). Every write is
published to the log, from which the catalogue, the users table and every live version apply it."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam

from monorec.config import ProjectConfig
from monorec.deployment import Deployment
from monorec.errors import RequestError, ServingUnavailable, StreamUnavailable
from monorec.feedback.journal import EventRecord
from monorec.serving.messages import ENTITY_ID_PATTERN, EntityWrite, EventBatch, EventIn, UserWrite
from monorec.stream.changes import MAX_REVISION, Change

__all__ = ["EntityId", "write_routes"]

EntityId = Annotated[
    str,
    PathParam(
        min_length=1,
        max_length=256,
        pattern=ENTITY_ID_PATTERN,
        description="an entity id: 1-256 characters, no control characters",
    ),
]


def write_routes(admin: Any, event_writer: Any) -> APIRouter:
    """The routes: entity and user writes behind ``admin``, events behind ``event_writer``."""
    router = APIRouter()

    @router.put("/v1/entities/{entity_id}", status_code=202, dependencies=[admin], tags=["entities"])
    def put_entity(entity_id: EntityId, body: EntityWrite, request: Request) -> dict[str, Any]:
        """Upserts an entity through the change log (every live version and the catalogue apply it)."""
        revision = body.revision if body.revision is not None else time.time_ns() // 1000
        change = Change("upsert", entity_id, revision, body.entity_type, body.title, tuple(body.categories))
        offsets = request.app.state.deployment.publish([change.to_dict()])
        return {"entity_id": entity_id, "revision": revision, "offset": offsets[0]}

    @router.delete("/v1/entities/{entity_id}", status_code=202, dependencies=[admin], tags=["entities"])
    def delete_entity(
        entity_id: EntityId, request: Request, revision: Annotated[int | None, Query(ge=0, le=MAX_REVISION)] = None
    ) -> dict[str, Any]:
        """Deletes an entity through the change log."""
        revision = revision if revision is not None else time.time_ns() // 1000
        offsets = request.app.state.deployment.publish([Change("delete", entity_id, revision).to_dict()])
        return {"entity_id": entity_id, "revision": revision, "offset": offsets[0]}

    @router.put("/v1/users/{user_id}", status_code=202, dependencies=[admin], tags=["users"])
    def put_user(user_id: EntityId, body: UserWrite, request: Request) -> dict[str, Any]:
        """Replaces a user's profile through the change log (the users table and every live version's user
        store apply it); creates the user when unknown."""
        config = _serving_config(request)
        revision, offset = request.app.state.users.write_profile(config, user_id, body.profile)
        return {"user_id": user_id, "revision": revision, "offset": offset}

    @router.post("/v1/events", status_code=202, dependencies=[event_writer], tags=["events"])
    def post_event(body: EventIn, request: Request) -> dict[str, Any]:
        """Records what a user did with an entity (idempotent by ``event_id``)."""
        return _record_events(request, [body])

    @router.post("/v1/events/batch", status_code=202, dependencies=[event_writer], tags=["events"])
    def post_events(body: EventBatch, request: Request) -> dict[str, Any]:
        """Records up to 1,000 events in one transaction (idempotent by ``event_id``)."""
        return _record_events(request, body.events)

    return router


def _serving_config(request: Request) -> ProjectConfig:
    """The serving version's config (what user profiles and histories are checked against).

    Raises:
        ServingUnavailable: no version serves yet.
    """
    version = request.app.state.deployment.router.current
    if version is None:
        raise ServingUnavailable("no version is serving yet; deploy one first")
    config: ProjectConfig = version.bundle.config
    return config


def _record_events(request: Request, events: list[EventIn]) -> dict[str, Any]:
    """Stores the events in the feedback journal; an event for a canvas the serving version does not
    declare is refused (422, position named); one for an entity the catalogue does not hold is stored
    (the entity may arrive later) and counted."""
    dep: Deployment = request.app.state.deployment
    version = dep.router.current
    if version is not None:
        declared = set(version.schema.canvas_names)
        for i, e in enumerate(events):
            if e.canvas not in declared:
                request.app.state.metrics.events.labels(e.kind, "unknown_canvas").inc()
                raise RequestError(f"events.{i}.canvas", f"unknown canvas {e.canvas!r}; declared: {sorted(declared)}")
    now = time.time()
    records = [
        EventRecord(e.event_id, e.request_id, e.user_id, e.canvas, e.entity_id, e.kind, e.value, e.ts or now)
        for e in events
    ]
    stored, duplicates = request.app.state.journal.record_events(records)
    if version is not None:  # the users' new states through the change log (histories, new users)
        try:
            request.app.state.users.after_events(version.bundle.config, records)
        except StreamUnavailable as exc:  # the events are stored: a retry (idempotent) publishes the states
            raise ServingUnavailable(f"events stored, users' states not yet published ({exc}); retry") from None
    known = dep.catalogue.entities(list({e.entity_id for e in events}))
    unknown = sum(1 for e in events if e.entity_id not in known)
    metrics = request.app.state.metrics.events
    for e in events:
        metrics.labels(e.kind, "unknown_entity" if e.entity_id not in known else "received").inc()
    if duplicates:
        metrics.labels("any", "duplicate").inc(duplicates)
    return {"stored": stored, "duplicates": duplicates, "unknown_entities": unknown}
