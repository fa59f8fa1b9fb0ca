"""The HTTP API end to end on a real deployment and server: every canvas, the batch endpoint, entity reads
and writes through the change log, admin deploy / switch / rollback with the token, health, readiness and metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from live_server import live_server
from monorec.deployment import Deployment
from monorec.registry import Registry
from monorec.serving.app import ServeSettings, create_app
from serving_fixtures import deployed
from waiting import wait_for

TOKEN = "admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(tmp_path: Path, two_versions: Registry, prepared) -> Iterator[tuple[httpx.Client, Deployment]]:  # type: ignore[no-untyped-def]
    dep = deployed(tmp_path / "dep", two_versions, prepared.catalogue)
    app = create_app(
        ServeSettings(root=tmp_path / "dep", registry=two_versions.root, admin_token=TOKEN), deployment=dep
    )
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, dep
    dep.close()


def test_every_canvas_and_the_batch_endpoint(api: tuple[httpx.Client, Deployment], prepared) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    source = prepared.catalogue["entity_id"][0]
    bodies = [
        {"canvas": "home", "context": {"user_id": "u1", "country": "US"}, "k": 5},
        {"canvas": "related", "context": {"source_item_id": source}, "k": 5},
        {"canvas": "search", "context": {"query": "space"}, "k": 5, "candidates": {"entity_types": ["movie"]}},
        {"canvas": "browse", "context": {"category": "drama"}, "k": 5},
    ]
    for body in bodies:
        r = client.post("/v1/recommend", json=body)
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["version"] == "v0001" and data["source"] == "model" and data["fallback"] is None
        assert len(data["items"]) == 5 and data["took_ms"] > 0
        assert all(set(i) >= {"entity_id", "title", "score", "predictions"} for i in data["items"])
    assert all(i["entity_type"] == "movie" for i in client.post("/v1/recommend", json=bodies[2]).json()["items"])
    batch = client.post("/v1/recommend/batch", json={"requests": bodies})
    assert batch.status_code == 200
    assert [r["canvas"] for r in batch.json()["responses"]] == ["home", "related", "search", "browse"]
    bad = client.post("/v1/recommend/batch", json={"requests": [bodies[0], {**bodies[0], "context": {"hour": "x"}}]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "requests", 1, "context", "hour"]


def test_entities_are_read_and_written_through_the_change_log(api: tuple[httpx.Client, Deployment]) -> None:
    client, dep = api
    assert client.get("/v1/entities/nope").status_code == 404
    r = client.put(
        "/v1/entities/m-fresh",
        json={"entity_type": "movie", "title": "Fresh Arrival", "categories": ["drama"]},
        headers=AUTH,
    )
    assert r.status_code == 202, r.text
    wait_for(lambda: client.get("/v1/entities/m-fresh").json().get("versions", {}).get("v0001") is True)
    wait_for(lambda: client.get("/v1/admin/stream", headers=AUTH).json()["lag"]["index-v0001"] == 0)
    entity = client.get("/v1/entities/m-fresh").json()
    assert entity["title"] == "Fresh Arrival" and entity["revision"] == r.json()["revision"]
    ranked = client.post("/v1/recommend", json={"canvas": "home", "candidates": {"ids": ["m-fresh"]}, "k": 1})
    assert [i["entity_id"] for i in ranked.json()["items"]] == ["m-fresh"]  # searchable in the serving version
    bad = client.put(
        "/v1/entities/m-bad", json={"entity_type": "spaceship", "title": "", "categories": []}, headers=AUTH
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "entity_type"]
    gone = client.delete("/v1/entities/m-fresh", headers=AUTH)
    assert gone.status_code == 202
    wait_for(lambda: client.get("/v1/entities/m-fresh").status_code == 404)
    wait_for(lambda: not dep.versions["v0001"].known(["m-fresh"]))


def test_admin_deploy_switch_and_rollback(api: tuple[httpx.Client, Deployment]) -> None:
    client, _ = api
    assert client.post("/v1/admin/deploy", json={"version": "v9999"}, headers=AUTH).status_code == 404
    r = client.post("/v1/admin/deploy", json={"version": "v0002"}, headers=AUTH)
    assert r.status_code == 202 and r.json()["state"] == "running"
    wait_for(lambda: client.get("/v1/admin/versions", headers=AUTH).json()["deploy"]["state"] != "running")
    assert client.get("/v1/admin/versions", headers=AUTH).json()["deploy"]["state"] == "done"
    assert client.get("/readyz").json() == {"status": "ready", "version": "v0002"}
    assert client.post("/v1/recommend", json={"canvas": "home"}).json()["version"] == "v0002"
    assert client.post("/v1/admin/rollback", headers=AUTH).json() == {"serving": "v0001"}
    assert client.post("/v1/recommend", json={"canvas": "home"}).json()["version"] == "v0001"
    assert client.post("/v1/admin/switch", json={"version": "v0002"}, headers=AUTH).json() == {"serving": "v0002"}
    refused = client.post("/v1/admin/retire", json={"version": "v0002"}, headers=AUTH)
    assert refused.status_code == 409 and "serving" in refused.json()["detail"]
    assert client.post("/v1/admin/retire", json={"version": "v0001"}, headers=AUTH).status_code == 200
    states = {row["version"]: row["state"] for row in client.get("/v1/admin/versions", headers=AUTH).json()["deployed"]}
    assert states == {"v0001": "retired", "v0002": "serving"}
    stream = client.get("/v1/admin/stream", headers=AUTH).json()
    assert set(stream) >= {"head", "lag", "dead_letters"} and "index-v0002" in stream["lag"]


def test_health_readiness_metrics_openapi_and_the_page(api: tuple[httpx.Client, Deployment]) -> None:
    client, _ = api
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.post("/v1/recommend", json={"canvas": "home", "context": {"user_id": "u1"}})
    client.post("/v1/recommend", json={"canvas": "search", "context": {"query": "x"}, "timeout_ms": 0.001})
    text = client.get("/metrics").text
    assert 'monorec_request_seconds_count{canvas="home"} 1.0' in text
    assert 'monorec_fallbacks_total{canvas="search",reason="deadline"} 1.0' in text
    assert 'monorec_version_live{state="serving",version="v0001"} 1.0' in text
    assert 'monorec_stream_lag{consumer="index-v0001"}' in text
    assert 'monorec_checkpoint_age_seconds{consumer="index-v0001"}' in text
    assert 'monorec_model_path_calls_total{stage="ranker"}' in text and "monorec_model_path_seconds_total" in text
    spec = client.get("/openapi.json").json()
    assert {"/v1/recommend", "/v1/recommend/batch", "/v1/entities/{entity_id}", "/v1/admin/deploy"} <= set(
        spec["paths"]
    )
    assert spec["components"]["schemas"]["RecommendRequest"]["properties"]["canvas"]["enum"] == [
        "home",
        "related",
        "search",
        "browse",
    ]
    page = client.get("/")
    assert page.status_code == 200 and "monorec" in page.text and "/v1/recommend" in page.text


def test_not_ready_without_a_serving_version(tmp_path: Path, two_versions: Registry) -> None:
    with Deployment(tmp_path / "empty", two_versions) as dep:
        app = create_app(ServeSettings(root=tmp_path / "empty", registry=two_versions.root), deployment=dep)
        with live_server(app) as url, httpx.Client(base_url=url) as client:
            assert client.get("/readyz").status_code == 503
            r = client.post("/v1/recommend", json={"canvas": "home"})
            assert r.status_code == 503 and "deploy" in r.json()["detail"]


def test_invalid_values_get_a_4xx_naming_the_field_never_a_500(api: tuple[httpx.Client, Deployment]) -> None:
    """Regression (issue 9.4): NaN and infinities (which JSON parsers accept) made the 422 handler fail
    while echoing them, answering 500."""
    client, _ = api
    cases = [
        ('{"canvas": "home", "timeout_ms": NaN}', ["body", "timeout_ms"]),
        ('{"canvas": NaN}', ["body", "canvas"]),
        ('{"canvas": "home", "k": -Infinity}', ["body", "k"]),
        ('{"canvas": "home", "k": Infinity}', ["body", "k"]),
        ('{"canvas": "home", "context": {"hour": NaN}}', ["body", "context", "hour"]),
    ]
    for raw, loc in cases:
        r = client.post("/v1/recommend", content=raw, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (raw, r.status_code, r.text)
        assert r.json()["detail"][0]["loc"][: len(loc)] == loc, (raw, r.text)


def test_entity_writes_are_checked_where_they_enter(api: tuple[httpx.Client, Deployment]) -> None:
    """Regressions (issue 9.1, 9.3, 9.5): a revision past int64, a control character in an id, a "|" in a
    category and an upsert without a title were all accepted (202) and then poisoned or changed the data."""
    client, dep = api
    head = dep.log.head()
    entity = {"entity_type": "movie", "title": "T", "categories": ["drama"]}
    refused = [
        ("DELETE", "/v1/entities/pdel?revision=1000000000000000000000000000000", None, ["query", "revision"]),
        ("PUT", "/v1/entities/big", {**entity, "revision": 2**63}, ["body", "revision"]),
        ("PUT", "/v1/entities/zz%00", entity, ["path", "entity_id"]),
        ("GET", "/v1/entities/zz%01", None, ["path", "entity_id"]),
        ("PUT", "/v1/entities/cat", {**entity, "categories": ["a|b"]}, ["body", "categories", 0]),
        ("PUT", "/v1/entities/untitled", {"entity_type": "movie", "categories": []}, ["body", "title"]),
        ("PUT", "/v1/entities/nocats", {"entity_type": "movie", "title": "T"}, ["body", "categories"]),
    ]
    for method, path, body, loc in refused:
        r = client.request(method, path, json=body, headers=AUTH)
        assert r.status_code == 422, (method, path, r.status_code, r.text)
        assert r.json()["detail"][0]["loc"] == loc, (path, r.text)
    assert dep.log.head() == head  # nothing reached the log
    ok = client.put("/v1/entities/max-rev", json={**entity, "revision": 2**63 - 1}, headers=AUTH)
    assert ok.status_code == 202, ok.text
    wait_for(lambda: client.get("/v1/entities/max-rev").status_code == 200)
    assert client.get("/readyz").status_code == 200


def test_a_chunked_body_over_the_limit_gets_413(api: tuple[httpx.Client, Deployment]) -> None:
    """Regression (issue 9.5): without a Content-Length the framework's body parser caught the limit's
    error and answered 400."""
    client, _ = api

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"canvas": "home", "context": {"query": "'
        for _ in range(80):
            yield b"x" * 16384
        yield b'"}}'

    r = client.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"][0]["type"] == "too_large"
    small = client.post(
        "/v1/recommend", content=iter([b'{"canvas": ', b'"home"}']), headers={"content-type": "application/json"}
    )
    assert small.status_code == 200, small.text  # a small chunked body still reaches the app whole


def test_deploying_a_retired_version_is_refused_up_front(api: tuple[httpx.Client, Deployment]) -> None:
    """Regression (issue 9.5): it answered 202 and failed in the background."""
    client, dep = api
    dep.deploy("v0002")
    dep.retire("v0001")
    r = client.post("/v1/admin/deploy", json={"version": "v0001"}, headers=AUTH)
    assert r.status_code == 409 and "retired" in r.json()["detail"]
    assert client.get("/v1/admin/versions", headers=AUTH).json()["deploy"]["state"] == "idle"


def test_a_failing_loader_makes_the_server_not_ready(api: tuple[httpx.Client, Deployment], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Regression (issue 9.1): a dead loader left /readyz ready and the stream status at lag 0."""
    client, dep = api

    def broken(*args: object, **kwargs: object) -> int:
        raise OSError("disk I/O error")

    monkeypatch.setattr(dep.catalogue, "apply", broken)
    assert client.put("/v1/entities/m-x", json={"entity_type": "movie", "title": "X", "categories": []}, headers=AUTH)
    wait_for(lambda: client.get("/readyz").status_code == 503)
    assert "disk I/O error" in client.get("/readyz").json()["loaders"]["catalogue"]
    assert 'monorec_loader_healthy{consumer="catalogue"} 0.0' in client.get("/metrics").text
    stream = client.get("/v1/admin/stream", headers=AUTH).json()
    assert stream["loaders"]["catalogue"]["healthy"] is False and stream["lag"]["catalogue"] >= 1
    monkeypatch.undo()
    wait_for(lambda: client.get("/readyz").status_code == 200)


def test_the_route_table_is_the_api_contract(tmp_path: Path) -> None:
    """Every public route and method, as clients rely on them: a refactor that loses or adds one fails
    here (the route modules are assembled in app.py; a dropped route was once caught only by the page)."""
    app = create_app(ServeSettings(root=tmp_path / "dep", registry=tmp_path / "registry"))
    routes = {(path, method) for path, ops in app.openapi()["paths"].items() for method in ops}
    reads = {("/v1/recommend", "post"), ("/v1/recommend/batch", "post"), ("/v1/info", "get")}
    entities = {("/v1/entities/{entity_id}", m) for m in ("get", "put", "delete")}
    users = {("/v1/users/{user_id}", m) for m in ("get", "put")}
    events = {("/v1/events", "post"), ("/v1/events/batch", "post")}
    admin = {(f"/v1/admin/{name}", "post") for name in ("deploy", "switch", "rollback", "retire")}
    admin |= {("/v1/admin/versions", "get"), ("/v1/admin/stream", "get"), ("/v1/admin/trial", "get")}
    admin |= {(f"/v1/admin/trial{tail}", "post") for tail in ("", "/compare", "/promote", "/abort")}
    operations = {("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get"), ("/v1/ops", "get")}
    assert routes == reads | entities | users | events | admin | operations
