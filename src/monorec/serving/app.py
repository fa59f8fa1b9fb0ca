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
import gc
import json
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from monorec.deployment import Deployment
from monorec.deployment.replica import Replica
from monorec.deployment.served import ServedDeployment
from monorec.environments import DEFAULT_ENVIRONMENT, EnvironmentSpec
from monorec.errors import (
    CanvasNotServed,
    ChangeError,
    DeployError,
    RegistryError,
    RequestError,
    ServingUnavailable,
    StreamUnavailable,
)
from monorec.feedback.journal import FeedbackJournal
from monorec.feedback.users import UserStates
from monorec.registry import Registry
from monorec.serving.body_limit import BodyLimit
from monorec.serving.docs import offline_docs
from monorec.serving.engine import ServingEngine
from monorec.serving.lifecycle_routes import DeployJob, lifecycle_routes
from monorec.serving.messages import (
    BatchRequest,
    BatchResponse,
    EntityOut,
    RecommendRequest,
    RecommendResponse,
    UserOut,
)
from monorec.serving.metrics import ServingMetrics
from monorec.serving.openapi import contract_openapi
from monorec.serving.owner_proxy import OwnerProxy, OwnerTrials
from monorec.serving.trial_routes import trial_routes
from monorec.serving.write_routes import EntityId, write_routes
from monorec.stream.publish import open_log

__all__ = ["ServeSettings", "create_app", "resolve_environment"]

_bearer = HTTPBearer(auto_error=False)  # a missing token is our 401 (not FastAPI's 403)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


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
    try:
        return registry.environment(settings.env, settings.config)
    except RegistryError as exc:
        raise DeployError(str(exc)) from None


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
        if isinstance(dep, Replica):  # the owner shows every replica's side of a trial beside its own
            dep.reporters["trial"] = engine.trials.report
        app.state.deployment, app.state.env, app.state.engine = dep, env, engine
        app.state.metrics = ServingMetrics(dep)
        app.state.metrics.watch_trials(lambda: engine.trials.summary() if dep.router.trial is not None else {})
        app.state.metrics.watch_stages(engine.model.stages)
        app.state.deploy_job = DeployJob()
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

    app.include_router(write_routes(Admin, EventWriter))

    # ----------------------------------------------------------------------------------- admin

    app.include_router(lifecycle_routes(Admin))
    app.include_router(trial_routes(Admin))

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
