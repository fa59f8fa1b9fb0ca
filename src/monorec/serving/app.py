"""The HTTP API: a thin FastAPI layer over :class:`~monorec.serving.engine.ServingEngine` and the
:class:`~monorec.deployment.Deployment` it serves (DESIGN section 7).

Reads (recommend, entities, info, the page) are open unless the environment sets ``open_reads = false``;
writes (entity upserts and deletes, which go to the change log) and admin calls (deploy, switch, rollback,
retire, stream status) need ``Authorization: Bearer <admin token>``. Without a configured token they are
refused, never open.

Errors: a request that does not fit gets a 422 whose ``detail[].loc`` names the field (FastAPI's own
format, also for the schema and environment checks of the engine); 401 without the token; 404 for an
unknown entity or a canvas the environment does not serve; 409 for a lifecycle step not allowed now;
413 for an oversized body; 503 when no version serves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from monorec.config import ProjectConfig
from monorec.deployment import Deployment
from monorec.deployment.replica import Replica
from monorec.deployment.served import ServedDeployment
from monorec.environments import DEFAULT_ENVIRONMENT, EnvironmentSpec, load_environments
from monorec.errors import (
    CanvasNotServed,
    ChangeError,
    DeployError,
    RequestError,
    ServingUnavailable,
    StreamUnavailable,
)
from monorec.feedback.journal import EventRecord, FeedbackJournal
from monorec.feedback.users import UserStates
from monorec.registry import Registry
from monorec.serving.body_limit import BodyLimit
from monorec.serving.docs import offline_docs
from monorec.serving.engine import ServingEngine
from monorec.serving.messages import (
    ENTITY_ID_PATTERN,
    BatchRequest,
    BatchResponse,
    EntityOut,
    EntityWrite,
    EventBatch,
    EventIn,
    RecommendRequest,
    RecommendResponse,
    UserOut,
    UserWrite,
)
from monorec.serving.metrics import ServingMetrics
from monorec.serving.openapi import contract_openapi
from monorec.serving.owner_proxy import OwnerProxy, OwnerTrials
from monorec.serving.trial_routes import trial_routes
from monorec.stream.changes import MAX_REVISION, Change
from monorec.stream.publish import open_log

__all__ = ["ServeSettings", "create_app", "resolve_environment"]

_bearer = HTTPBearer(auto_error=False)  # a missing token is our 401 (not FastAPI's 403)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
EntityId = Annotated[
    str,
    PathParam(
        min_length=1,
        max_length=256,
        pattern=ENTITY_ID_PATTERN,
        description="an entity id: 1-256 characters, no control characters",
    ),
]


@dataclass(frozen=True)
class ServeSettings:
    """Where the deployment lives and how this process serves it."""

    root: Path  # the deployment folder (control plane, indexes, embedded log)
    registry: Path  # the model registry
    env: str = DEFAULT_ENVIRONMENT
    config: Path | None = None  # environments from this TOML (default: those of the newest published version)
    environment: EnvironmentSpec | None = None  # given directly (embedding, tests): overrides env and config
    redis_url: str | None = None  # a Redis stream as the change log
    admin_token: str | None = None  # None: admin and write endpoints refuse every call
    read_token: str | None = None  # for environments with open_reads = false (default: the admin token)
    max_body_bytes: int = 1 << 20
    # the feedback journal (answers' contexts and users' events, monorec.feedback): a SQLite file, by
    # default ``feedback.sqlite`` in the deployment folder
    journal: Path | None = None
    events_token: str | None = None  # for POST /v1/events (default: the admin token; both are accepted)
    public_url: str | None = None  # announced in the deployment folder, so the CLI can reach this server
    # a replica (monorec.deployment.replica) serves a folder another process owns, under this name, and
    # hands the owner's calls (admin, writes, events) to ``owner_url``
    replica: str | None = None
    owner_url: str | None = None


def resolve_environment(settings: ServeSettings, registry: Registry) -> EnvironmentSpec:
    """The environment named in the settings, from the given config file or the registry's newest version.

    Raises:
        ConfigError: no environment of that name. DeployError: the registry has no version.
    """
    if settings.environment is not None:
        return settings.environment
    versions = registry.versions()
    if not versions:
        raise DeployError(f"registry {registry.root} has no version; publish one first")
    config = registry.config(versions[-1].version)
    if settings.config is not None:
        envs = load_environments(settings.config, {c.name: c.fields for c in config.canvases})
        config = dataclasses.replace(config, environments=envs)
    return config.environment(settings.env)


def _loc(field: str) -> list[str | int]:
    """An engine field name ("requests.3.context.hour") -> a FastAPI ``loc`` in the body."""
    return ["body", *(int(p) if p.isdigit() else p for p in field.split("."))]


def _plain_error(error: Any) -> dict[str, Any]:
    """One validation error as JSON-safe fields: loc, msg, type and the input when it encodes as JSON."""
    out: dict[str, Any] = {
        "loc": list(error.get("loc", ())),
        "msg": str(error.get("msg", "")),
        "type": error.get("type"),
    }
    try:
        json.dumps(error.get("input"), allow_nan=False)
        out["input"] = error.get("input")
    except (TypeError, ValueError):
        out["input"] = repr(error.get("input"))[:200]
    return out


def _json(model: BaseModel) -> Response:
    """The engine's answers are already validated models: serialized once, without FastAPI validating them
    again against ``response_model`` (which stays on the route for the OpenAPI docs)."""
    return Response(model.__pydantic_serializer__.to_json(model), media_type="application/json")


class VersionBody(BaseModel):
    version: str = Field(min_length=1, max_length=64)


class _DeployJob:
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


def create_app(settings: ServeSettings, *, deployment: Deployment | None = None) -> FastAPI:
    """The serving app. Resources open in the lifespan: the deployment folder (unless one is given, which
    the caller keeps owning), its serving and standby versions with their loaders, and the engine."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = deployment is None
        dep: Deployment | Replica
        if deployment is not None:
            dep = deployment
        elif settings.replica is not None:
            log = open_log(settings.root, settings.redis_url)
            dep = Replica(settings.root, settings.registry, name=settings.replica, log=log)
            if settings.owner_url:  # its trial guard aborts the owner's trial through the owner
                dep.trials = OwnerTrials(settings.owner_url, settings.admin_token)
        else:
            dep = Deployment(settings.root, settings.registry, log=open_log(settings.root, settings.redis_url))
        dep.open()  # idempotent: live versions loaded, every loader (the catalogue's too) running
        if owned and settings.public_url and isinstance(dep, Deployment):
            dep.announce(settings.public_url)  # `monorec versions` etc. then ask this server
        env = resolve_environment(settings, dep.registry)
        versions = dep.registry.versions()
        if versions:
            contract_openapi(app, dep.registry.config(versions[-1].version), env)
        journal = FeedbackJournal(settings.journal or settings.root / "feedback.sqlite")
        engine = ServingEngine(dep, env, journal=journal)
        app.state.deployment, app.state.env, app.state.engine = dep, env, engine
        app.state.metrics = ServingMetrics(dep)
        app.state.metrics.watch_trials(lambda: engine.trials.summary() if dep.router.trial is not None else {})
        app.state.metrics.watch_stages(engine.model.stages)
        app.state.deploy_job = _DeployJob()
        app.state.journal = journal
        # events and profile writes -> user changes on the log (the owner's: a replica hands them over)
        app.state.users = UserStates(dep, journal) if isinstance(dep, Deployment) else None
        # the app, its routes and schemas are long-lived: out of the collector's generations like the
        # deployment's state (open() has just run the full collection), so that full collections walk only
        # what requests allocate
        gc.freeze()
        try:
            yield
        finally:
            engine.close()
            journal.close()
            if owned:
                dep.close()

    app = FastAPI(
        title="monorec",
        summary="One canvas-agnostic API for every search and recommendation canvas.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's own /docs loads Swagger UI from a CDN: blank on a machine without internet
        redoc_url=None,
    )
    offline_docs(app)

    def _check(credentials: HTTPAuthorizationCredentials | None, *tokens: str | None) -> None:
        given = credentials.credentials if credentials is not None else None
        if given is None or not any(t and secrets.compare_digest(given.encode(), t.encode()) for t in tokens):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    # async although they never wait: FastAPI runs a plain-def dependency on its thread pool, one hand-off
    # (and GIL round trip) per request for a string comparison
    async def admin(credentials: Credentials) -> None:
        _check(credentials, settings.admin_token)

    async def reader(request: Request, credentials: Credentials) -> None:
        if not request.app.state.env.open_reads:
            _check(credentials, settings.read_token or settings.admin_token, settings.admin_token)

    async def event_writer(credentials: Credentials) -> None:
        _check(credentials, settings.events_token, settings.admin_token)

    Admin = Depends(admin)
    Reader = Depends(reader)
    EventWriter = Depends(event_writer)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 format, with the offending value echoed only when it is plain JSON: a NaN or an
        infinity (which Python's JSON parser accepts) cannot be encoded and must not turn a 422 into a 500."""
        request.app.state.metrics.errors.labels("422").inc()
        return JSONResponse({"detail": [_plain_error(e) for e in exc.errors()]}, status_code=422)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        status = 404 if isinstance(exc, CanvasNotServed) else 422
        request.app.state.metrics.errors.labels(str(status)).inc()
        detail = [{"loc": _loc(exc.field), "msg": exc.reason, "type": "request_error"}]
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(ChangeError)
    async def change_error(request: Request, exc: ChangeError) -> JSONResponse:
        detail = [{"loc": ["body", exc.field], "msg": exc.reason, "type": "change_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(ServingUnavailable)
    async def unavailable(request: Request, exc: ServingUnavailable) -> JSONResponse:
        request.app.state.metrics.errors.labels("503").inc()
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(StreamUnavailable)
    async def log_unavailable(request: Request, exc: StreamUnavailable) -> JSONResponse:
        """A write the change log could not take (its broker is away): nothing was published; retry."""
        request.app.state.metrics.errors.labels("503").inc()
        return JSONResponse({"detail": f"the change log is unreachable, nothing published: {exc}"}, status_code=503)

    @app.exception_handler(DeployError)
    async def deploy_error(request: Request, exc: DeployError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    # ----------------------------------------------------------------------------------- reads

    @app.post("/v1/recommend", response_model=RecommendResponse, dependencies=[Reader], tags=["recommend"])
    async def recommend(body: RecommendRequest, request: Request) -> Response:
        """One ranked list for any canvas: retrieval + ranking by the serving version, or a fallback."""
        response = await request.app.state.engine.recommend_async(body)
        request.app.state.metrics.observe(response)
        return _json(response)

    @app.post("/v1/recommend/batch", response_model=BatchResponse, dependencies=[Reader], tags=["recommend"])
    async def recommend_batch(body: BatchRequest, request: Request) -> Response:
        """Several requests in one call, answered together (each with its own deadline)."""
        responses = await request.app.state.engine.recommend_many_async(body.requests)
        for r in responses:
            request.app.state.metrics.observe(r)
        return _json(BatchResponse(responses=responses))

    @app.get("/v1/entities/{entity_id}", response_model=EntityOut, dependencies=[Reader], tags=["entities"])
    def get_entity(entity_id: EntityId, request: Request) -> EntityOut:
        """A catalogue entity and which live versions hold it."""
        dep: ServedDeployment = request.app.state.deployment
        entity = dep.catalogue.entities([entity_id]).get(entity_id)
        if entity is None:
            raise HTTPException(404, f"unknown entity {entity_id!r}")
        return EntityOut(
            entity_id=entity.entity_id,
            entity_type=entity.entity_type,
            title=entity.title,
            categories=list(entity.categories),
            revision=entity.revision,
            versions={name: bool(sv.known([entity_id])) for name, sv in list(dep.versions.items())},
        )

    @app.get("/v1/info", dependencies=[Reader], tags=["info"])
    def info(request: Request) -> dict[str, Any]:
        """What this server serves: environment, canvases and their fields, entity types, example values."""
        dep: ServedDeployment = request.app.state.deployment
        env: EnvironmentSpec = request.app.state.env
        version = dep.router.current
        out: dict[str, Any] = {"environment": env.name, "mode": env.mode, "version": None, "canvases": []}
        if version is None:
            return out
        config = version.bundle.config
        featurizer = version.bundle.featurizer
        examples = {
            f.name: featurizer.known_values(f.name)[:50]
            for f in config.fields
            if f.kind in ("id", "categorical") and f.vocabulary != "entity"
        }
        out.update(
            version=version.name,
            canvases=[{"name": c.name, "fields": list(c.fields)} for c in config.canvases if env.serves(c.name)],
            fields=[{"name": f.name, "kind": f.kind, "vocabulary": f.vocabulary} for f in config.fields],
            entity_types=list(config.entity_types),
            examples=examples,
            latency_budget_ms=env.latency_budget_ms,
            max_k=env.max_k,
            user_field=config.feedback.user_field,
            history_field=config.feedback.history_field,
        )
        return out

    # ---------------------------------------------------------------------------------- writes

    @app.put("/v1/entities/{entity_id}", status_code=202, dependencies=[Admin], tags=["entities"])
    def put_entity(entity_id: EntityId, body: EntityWrite, request: Request) -> dict[str, Any]:
        """Upserts an entity through the change log (every live version and the catalogue apply it)."""
        revision = body.revision if body.revision is not None else time.time_ns() // 1000
        change = Change("upsert", entity_id, revision, body.entity_type, body.title, tuple(body.categories))
        offsets = request.app.state.deployment.publish([change.to_dict()])
        return {"entity_id": entity_id, "revision": revision, "offset": offsets[0]}

    @app.delete("/v1/entities/{entity_id}", status_code=202, dependencies=[Admin], tags=["entities"])
    def delete_entity(
        entity_id: EntityId, request: Request, revision: Annotated[int | None, Query(ge=0, le=MAX_REVISION)] = None
    ) -> dict[str, Any]:
        """Deletes an entity through the change log."""
        revision = revision if revision is not None else time.time_ns() // 1000
        offsets = request.app.state.deployment.publish([Change("delete", entity_id, revision).to_dict()])
        return {"entity_id": entity_id, "revision": revision, "offset": offsets[0]}

    @app.get("/v1/users/{user_id}", response_model=UserOut, dependencies=[Reader], tags=["users"])
    def get_user(user_id: EntityId, request: Request) -> UserOut:
        """A user's stored state (profile, recent history) and which live versions' user stores hold it."""
        dep: ServedDeployment = request.app.state.deployment
        state = dep.catalogue.user(user_id)
        if state is None:
            raise HTTPException(404, f"unknown user {user_id!r}")
        return UserOut(
            user_id=state.user_id,
            revision=state.revision,
            profile=dict(state.profile),
            history=list(state.history),
            versions={name: sv.holds_user(user_id, state.revision) for name, sv in list(dep.versions.items())},
        )

    @app.put("/v1/users/{user_id}", status_code=202, dependencies=[Admin], tags=["users"])
    def put_user(user_id: EntityId, body: UserWrite, request: Request) -> dict[str, Any]:
        """Replaces a user's profile through the change log (the users table and every live version's user
        store apply it); creates the user when unknown."""
        config = _serving_config(request)
        revision, offset = request.app.state.users.write_profile(config, user_id, body.profile)
        return {"user_id": user_id, "revision": revision, "offset": offset}

    @app.post("/v1/events", status_code=202, dependencies=[EventWriter], tags=["events"])
    def post_event(body: EventIn, request: Request) -> dict[str, Any]:
        """Records what a user did with an entity (idempotent by ``event_id``)."""
        return _record_events(request, [body])

    @app.post("/v1/events/batch", status_code=202, dependencies=[EventWriter], tags=["events"])
    def post_events(body: EventBatch, request: Request) -> dict[str, Any]:
        """Records up to 1,000 events in one transaction (idempotent by ``event_id``)."""
        return _record_events(request, body.events)

    # ----------------------------------------------------------------------------------- admin

    @app.get("/v1/admin/versions", dependencies=[Admin], tags=["admin"])
    def versions(request: Request) -> dict[str, Any]:
        dep: Deployment = request.app.state.deployment
        published = [v.version for v in dep.registry.versions()]
        return {"deployed": dep.status(), "published": published, "deploy": request.app.state.deploy_job.to_dict()}

    @app.post("/v1/admin/deploy", status_code=202, dependencies=[Admin], tags=["admin"])
    def deploy(body: VersionBody, request: Request) -> dict[str, Any]:
        """Starts deploying a published version (bulk load, validation, switch) in the background."""
        dep: Deployment = request.app.state.deployment
        if body.version not in {v.version for v in dep.registry.versions()}:
            raise HTTPException(404, f"unknown version {body.version!r}")
        dep.check_deployable(body.version)  # a retired version: 409 now, not a failure in the background
        request.app.state.deploy_job.start(dep, body.version)
        return request.app.state.deploy_job.to_dict()

    @app.post("/v1/admin/switch", dependencies=[Admin], tags=["admin"])
    def switch(body: VersionBody, request: Request) -> dict[str, Any]:
        request.app.state.deployment.switch(body.version)
        return {"serving": body.version}

    @app.post("/v1/admin/rollback", dependencies=[Admin], tags=["admin"])
    def rollback(request: Request) -> dict[str, Any]:
        return {"serving": request.app.state.deployment.rollback()}

    @app.post("/v1/admin/retire", dependencies=[Admin], tags=["admin"])
    def retire(body: VersionBody, request: Request) -> dict[str, Any]:
        request.app.state.deployment.retire(body.version)
        return {"retired": body.version}

    app.include_router(trial_routes(Admin))

    @app.get("/v1/admin/stream", dependencies=[Admin], tags=["admin"])
    def stream(request: Request) -> dict[str, Any]:
        return request.app.state.deployment.stream_status()

    # ------------------------------------------------------------------------------ operations

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    def readyz(request: Request) -> JSONResponse:
        """Ready when a version serves and every loader applies the change log (a stopped or failing loader
        would serve an ever staler catalogue while writes answer 202)."""
        dep: ServedDeployment = request.app.state.deployment
        version = dep.router.current
        if version is None:
            return JSONResponse({"status": "no version serving"}, status_code=503)
        failing = dep.unhealthy_loaders()
        if failing:
            return JSONResponse({"status": "loaders failing", "loaders": failing}, status_code=503)
        ready: dict[str, Any] = {"status": "ready", "version": version.name}
        if isinstance(dep, Replica):  # which process answered: connections spread over the replicas
            ready.update(replica=dep.name, pid=os.getpid(), applied=dep.applied_offsets())
        return JSONResponse(ready)

    @app.get("/v1/ops", dependencies=[Reader], tags=["operations"])
    def ops(request: Request) -> dict[str, Any]:
        """What the page's operations view shows: versions and their states, each consumer's lag and
        health, dead letters, recent latency per canvas, and the trial with its comparison."""
        dep: ServedDeployment = request.app.state.deployment
        stream = dep.stream_status()
        trial = dep.router.trial
        return {
            "versions": [{k: r[k] for k in ("version", "state", "entities", "lag", "in_flight")} for r in dep.status()],
            "lag": stream["lag"],
            "loaders": {g: h["healthy"] for g, h in stream["loaders"].items()},
            "dead_letters": stream["dead_letters"],
            "latency": request.app.state.metrics.recent_latency(),
            "trial": None if trial is None else {"version": trial.version, "mode": trial.mode, "share": trial.share},
            "trial_comparison": request.app.state.engine.trials.summary() if trial is not None else None,
            "last_trial_abort": dep.trials.last_abort if isinstance(dep, Deployment) else None,  # the owner runs trials
        }

    @app.get("/metrics", tags=["operations"])
    def metrics(request: Request) -> Response:
        return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files("monorec.serving").joinpath("static/index.html").read_text("utf-8"))

    if settings.replica is not None:
        if not settings.owner_url:
            raise ValueError("a replica needs the owner's URL (ServeSettings.owner_url)")
        app.add_middleware(OwnerProxy, owner_url=settings.owner_url)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)  # added last: outermost, before the proxy
    return app


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
