"""Property-based tests of the HTTP API against its own OpenAPI spec (schemathesis + hypothesis), on a real
uvicorn server: valid and invalid requests for every operation, without a token.

- never a 500 (a 503 only where the request asked for no fallback and the model missed its deadline);
- every 4xx for a bad request names what was wrong (``detail[].loc`` / ``msg``);
- admin and write calls without the token get 401, and nothing changes: same serving version, same deployed
  states, same change-log head.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from live_server import live_server
from monorec.deployment import Deployment
from monorec.environments import EnvironmentSpec
from monorec.registry import Registry
from monorec.serving.app import ServeSettings, create_app
from monorec.serving.messages import BatchResponse, RecommendResponse
from serving_fixtures import deployed

TOKEN = "s3cret-admin-token"
PROTECTED = ("/v1/admin/",)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, two_versions: Registry, prepared
) -> Iterator[tuple[str, Deployment]]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("api") / "dep"
    dep = deployed(root, two_versions, prepared.catalogue)
    app = create_app(ServeSettings(root=root, registry=two_versions.root, admin_token=TOKEN), deployment=dep)
    with live_server(app) as url:
        yield url, dep
    dep.close()


def state_of(dep: Deployment) -> tuple[object, ...]:
    current = dep.router.current
    return (
        None if current is None else current.name,
        [(r["version"], r["state"]) for r in dep.status()],
        dep.log.head(),
        dep.catalogue.count(),
    )


def is_protected(method: str, path: str) -> bool:
    return path.startswith(PROTECTED) or (path.startswith("/v1/entities/") and method in ("PUT", "DELETE"))


def names_the_problem(response: httpx.Response | object) -> bool:
    body = response.json()  # type: ignore[attr-defined]
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        return bool(detail) and all(d.get("loc") and d.get("msg") for d in detail)
    return isinstance(detail, str) and len(detail) > 0


def judge(method: str, path: str, mode: str, case: schemathesis.Case, response: httpx.Response) -> list[str]:
    """What is wrong with one generated call's outcome (nothing, mostly)."""
    status = response.status_code
    where = f"{method} {path} [{mode}] -> {status}: {str(case.body)[:200]}"
    body = case.body if isinstance(case.body, dict) else {}
    no_fallback = body.get("fallback") == "none" or any(
        isinstance(r, dict) and r.get("fallback") == "none" for r in body.get("requests", [])
    )
    problems = []
    if status >= 500 and not (status == 503 and no_fallback):
        problems.append(f"server error {where} {response.text[:300]}")
    if is_protected(method, path):
        if status not in (401, 400, 422):  # malformed before the token is checked is fine too
            problems.append(f"unauthenticated call not refused {where}")
    elif 400 <= status < 500 and status != 404 and not names_the_problem(response):
        problems.append(f"4xx without the field {where} {response.text[:300]}")
    if status == 200 and path == "/v1/recommend":
        RecommendResponse.model_validate(response.json())
    if status == 200 and path == "/v1/recommend/batch":
        BatchResponse.model_validate(response.json())
    return problems


def fuzz(operation: Any, mode: schemathesis.GenerationMode, seen: Counter[tuple[str, str, int]]) -> list[str]:
    method, path = operation.method.upper(), operation.path
    problems: list[str] = []

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        response = case.call()
        seen[(method, path, response.status_code)] += 1
        problems.extend(judge(method, path, mode.value, case, response))

    with contextlib.suppress(Unsatisfiable):  # no invalid input exists (e.g. GET /healthz has no parameters)
        check()
    return problems


@pytest.mark.slow
def test_the_api_never_fails_and_names_what_is_wrong(server: tuple[str, Deployment]) -> None:
    url, dep = server
    before = state_of(dep)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    seen: Counter[tuple[str, str, int]] = Counter()
    problems: list[str] = []
    for result in schema.get_all_operations():
        for mode in schemathesis.GenerationMode:
            problems += fuzz(result.ok(), mode, seen)
    assert not problems, "\n".join(problems[:20])
    assert state_of(dep) == before, "an unauthenticated call changed the deployment"
    # the generators did reach the interesting outcomes
    assert seen[("POST", "/v1/recommend", 200)] > 10
    assert seen[("POST", "/v1/recommend", 422)] > 0
    assert seen[("POST", "/v1/admin/switch", 401)] > 0


def test_oversized_bodies_k_and_queries_are_refused(server: tuple[str, Deployment]) -> None:
    url, _ = server
    with httpx.Client(base_url=url) as client:
        huge = {"canvas": "home", "context": {"user_id": "u1"}, "candidates": {"exclude": ["x" * 200] * 6000}}
        r = client.post("/v1/recommend", content=json.dumps(huge), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["detail"][0]["loc"] == ["body"]
        r = client.post("/v1/recommend", json={"canvas": "home", "k": 5000})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "k"]
        r = client.post("/v1/recommend", json={"canvas": "home", "k": 101})  # beyond the environment's max_k
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "k"]
        r = client.post("/v1/recommend", json={"canvas": "search", "context": {"query": "q" * 5000}})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "context", "query"]
        r = client.post("/v1/recommend/batch", json={"requests": [{"canvas": "home"}] * 65})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "requests"]


def test_unknown_ids_are_cold_start(server: tuple[str, Deployment]) -> None:
    url, _ = server
    with httpx.Client(base_url=url) as client:
        for canvas, context in [
            ("home", {"user_id": "user-from-the-future", "country": "Narnia", "device": "toaster"}),
            ("related", {"source_item_id": "item-never-seen"}),
            ("browse", {"category": "category-never-seen"}),
        ]:
            r = client.post("/v1/recommend", json={"canvas": canvas, "context": context, "k": 5})
            assert r.status_code == 200, r.text
            assert r.json()["source"] == "model" and len(r.json()["items"]) == 5, r.json()


def test_unauthenticated_admin_calls_get_401_and_change_nothing(server: tuple[str, Deployment]) -> None:
    url, dep = server
    before = state_of(dep)
    calls = [
        ("POST", "/v1/admin/deploy", {"version": "v0002"}),
        ("POST", "/v1/admin/switch", {"version": "v0002"}),
        ("POST", "/v1/admin/rollback", None),
        ("POST", "/v1/admin/retire", {"version": "v0001"}),
        ("GET", "/v1/admin/stream", None),
        ("GET", "/v1/admin/versions", None),
        ("PUT", "/v1/entities/m-new", {"entity_type": "movie", "title": "Intruder", "categories": []}),
        ("DELETE", "/v1/entities/m00001", None),
    ]
    with httpx.Client(base_url=url) as client:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic czNjcmV0"}):
            for method, path, body in calls:
                r = client.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers.get("www-authenticate") == "Bearer"
    assert state_of(dep) == before


def test_closed_reads_need_a_token(tmp_path: Path, two_versions: Registry, prepared) -> None:  # type: ignore[no-untyped-def]
    dep = deployed(tmp_path / "dep", two_versions, prepared.catalogue)
    try:
        settings_ = ServeSettings(
            root=tmp_path / "dep",
            registry=two_versions.root,
            environment=EnvironmentSpec("private", open_reads=False),
            admin_token=TOKEN,
        )
        with live_server(create_app(settings_, deployment=dep)) as url, httpx.Client(base_url=url) as client:
            body = {"canvas": "home", "context": {"user_id": "u1"}}
            assert client.post("/v1/recommend", json=body).status_code == 401
            assert client.get("/v1/info").status_code == 401
            ok = client.post("/v1/recommend", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200
            assert client.get("/healthz").status_code == 200  # operations stay open
    finally:
        dep.close()
