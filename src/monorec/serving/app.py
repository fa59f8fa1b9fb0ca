"""The HTTP API: a thin FastAPI layer over :class:`~monorec.serving.engine.ServingEngine` and the
:class:`~monorec.deploy.Deployment` it serves (DESIGN section 7).

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
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from monorec.config import FieldSpec, ProjectConfig
from monorec.deploy import Deployment
from monorec.environments import DEFAULT_ENVIRONMENT, EnvironmentSpec, load_environments
from monorec.errors import CanvasNotServed, ChangeError, DeployError, RequestError, ServingUnavailable
from monorec.serving.engine import ServingEngine
from monorec.serving.messages import (
    BatchRequest,
    BatchResponse,
    EntityOut,
    EntityWrite,
    RecommendRequest,
    RecommendResponse,
)
from monorec.serving.metrics import ServingMetrics
from monorec.stream.changes import Change

__all__ = ["ServeSettings", "create_app", "resolve_environment"]

_bearer = HTTPBearer(auto_error=False)  # a missing token is our 401 (not FastAPI's 403)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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


def resolve_environment(settings: ServeSettings, deployment: Deployment) -> EnvironmentSpec:
    """The environment named in the settings, from the given config file or the registry's newest version.

    Raises:
        ConfigError: no environment of that name.
    """
    if settings.environment is not None:
        return settings.environment
    versions = deployment.registry.versions()
    if not versions:
        raise DeployError(f"registry {deployment.registry.root} has no version; publish one first")
    config = deployment.registry.config(versions[-1].version)
    if settings.config is not None:
        envs = load_environments(settings.config, {c.name: c.fields for c in config.canvases})
        config = dataclasses.replace(config, environments=envs)
    return config.environment(settings.env)


class _BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, counting what arrives (a missing or false
    Content-Length does not get past it)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(self.limit, send)


class _TooLarge(Exception):
    pass


async def _too_large(limit: int, send: Send) -> None:
    body = JSONResponse(
        {"detail": [{"loc": ["body"], "msg": f"request body exceeds {limit} bytes", "type": "too_large"}]},
        status_code=413,
    ).body
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _loc(field: str) -> list[str | int]:
    """An engine field name ("requests.3.context.hour") -> a FastAPI ``loc`` in the body."""
    return ["body", *(int(p) if p.isdigit() else p for p in field.split("."))]


def _contract_openapi(app: FastAPI, config: ProjectConfig, env: EnvironmentSpec) -> None:
    """Makes ``/openapi.json`` state this server's contract: the canvases it serves, each declared context
    field with its type and limits, the entity types and the environment's k limit (clients and the
    property-based tests generate requests from it)."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = base()
        schemas = spec["components"]["schemas"]
        request = schemas["RecommendRequest"]["properties"]
        request["canvas"] = {"type": "string", "enum": [c.name for c in config.canvases if env.serves(c.name)]}
        request["k"] = {"type": "integer", "minimum": 1, "maximum": env.max_k, "default": 10}
        request["context"] = {
            "type": "object",
            "additionalProperties": False,
            "description": "any subset of the unified context fields (unknown ids are cold start)",
            "properties": {f.name: _field_schema(f) for f in config.fields},
        }
        types = {"type": "array", "items": {"type": "string", "enum": list(config.entity_types)}, "maxItems": 64}
        schemas["Candidates"]["properties"]["entity_types"] = {"anyOf": [types, {"type": "null"}]}
        app.openapi_schema = spec
        return spec

    app.openapi_schema = None
    app.openapi = openapi  # type: ignore[method-assign]


def _field_schema(f: FieldSpec) -> dict[str, Any]:
    if f.kind == "numeric":
        return {"anyOf": [{"type": "number"}, {"type": "null"}]}
    if f.kind == "id_list":
        ids = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 256}, "maxItems": 1000}
        return {"anyOf": [ids, {"type": "null"}]}
    limit = f.max_length if f.kind == "text" else 256
    return {"anyOf": [{"type": "string", "maxLength": limit}, {"type": "null"}], "description": f.description}


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
        if deployment is None:
            from monorec.stream.publish import open_log

            dep = Deployment(settings.root, settings.registry, log=open_log(settings.root, settings.redis_url))
        else:
            dep = deployment
        dep.open()  # idempotent: live versions loaded, every loader (the catalogue's too) running
        env = resolve_environment(settings, dep)
        versions = dep.registry.versions()
        if versions:
            _contract_openapi(app, dep.registry.config(versions[-1].version), env)
        engine = ServingEngine(dep, env)
        app.state.deployment, app.state.env, app.state.engine = dep, env, engine
        app.state.metrics = ServingMetrics(dep)
        app.state.deploy_job = _DeployJob()
        # the app, its routes and schemas are long-lived: out of the collector's generations, so that a full
        # collection walks only what requests allocate (measured: 40 ms pauses at 100k entities without it)
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            engine.close()
            if owned:
                dep.close()

    app = FastAPI(
        title="monorec",
        summary="One canvas-agnostic API for every search and recommendation canvas.",
        version="1",
        lifespan=lifespan,
    )

    def _check(credentials: HTTPAuthorizationCredentials | None, *tokens: str | None) -> None:
        given = credentials.credentials if credentials is not None else None
        if given is None or not any(t and secrets.compare_digest(given.encode(), t.encode()) for t in tokens):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    def admin(credentials: Credentials) -> None:
        _check(credentials, settings.admin_token)

    def reader(request: Request, credentials: Credentials) -> None:
        if not request.app.state.env.open_reads:
            _check(credentials, settings.read_token or settings.admin_token, settings.admin_token)

    Admin = Depends(admin)
    Reader = Depends(reader)

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
    def get_entity(entity_id: str, request: Request) -> EntityOut:
        """A catalogue entity and which live versions hold it."""
        dep: Deployment = request.app.state.deployment
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
        dep: Deployment = request.app.state.deployment
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
        )
        return out

    # ---------------------------------------------------------------------------------- writes

    @app.put("/v1/entities/{entity_id}", status_code=202, dependencies=[Admin], tags=["entities"])
    def put_entity(entity_id: str, body: EntityWrite, request: Request) -> dict[str, Any]:
        """Upserts an entity through the change log (every live version and the catalogue apply it)."""
        revision = body.revision if body.revision is not None else time.time_ns() // 1000
        change = Change("upsert", entity_id, revision, body.entity_type, body.title, tuple(body.categories))
        offsets = request.app.state.deployment.publish([change.to_dict()])
        return {"entity_id": entity_id, "revision": revision, "offset": offsets[0]}

    @app.delete("/v1/entities/{entity_id}", status_code=202, dependencies=[Admin], tags=["entities"])
    def delete_entity(
        entity_id: str, request: Request, revision: Annotated[int | None, Query(ge=0)] = None
    ) -> dict[str, Any]:
        """Deletes an entity through the change log."""
        revision = revision if revision is not None else time.time_ns() // 1000
        offsets = request.app.state.deployment.publish([Change("delete", entity_id, revision).to_dict()])
        return {"entity_id": entity_id, "revision": revision, "offset": offsets[0]}

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
        """Ready when a version serves."""
        version = request.app.state.deployment.router.current
        if version is None:
            return JSONResponse({"status": "no version serving"}, status_code=503)
        return JSONResponse({"status": "ready", "version": version.name})

    @app.get("/metrics", tags=["operations"])
    def metrics(request: Request) -> Response:
        return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files("monorec.serving").joinpath("static/index.html").read_text("utf-8"))

    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)
    return app
