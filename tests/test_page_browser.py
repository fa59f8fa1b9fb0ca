"""The try-it page in a real headless Chromium (the system's, from apt) against a real server: every canvas,
a user typed in, the search box, related items of a clicked entity, category browse, and what each answer
shows (entities, scores, version, latency, fallback); and the API docs at /docs, rendered without any
request leaving the machine."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from live_server import live_server
from monorec.registry import Registry
from monorec.serving.app import ServeSettings, create_app
from serving_fixtures import deployed
from waiting import wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="no system chromium (make test installs it with apt-get; the test never skips there)",
)


@pytest.fixture(scope="module")
def page_url(tmp_path_factory: pytest.TempPathFactory, two_versions: Registry, prepared) -> Iterator[str]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("page") / "dep"
    dep = deployed(root, two_versions, prepared.catalogue)
    try:
        with live_server(create_app(ServeSettings(root=root, registry=two_versions.root), deployment=dep)) as url:
            yield url
    finally:
        dep.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM is not None, "chromium is not installed (.ci/run installs it)"
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        try:
            yield context
        finally:
            context.close()


def rows(page: Any) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        "#results tbody tr",
        "trs => trs.map(tr => ({id: tr.dataset.entityId, type: tr.dataset.entityType,"
        " score: tr.querySelector('.score').textContent,"
        " sources: tr.querySelector('.sources').textContent}))",
    )


def ask(page: Any) -> list[dict[str, str]]:
    with page.expect_response(lambda r: r.url.endswith("/v1/recommend")) as response:
        page.click("#go")
    assert response.value.status == 200
    page.wait_for_selector("#meta-version")
    return rows(page)


def test_every_canvas_from_the_page(browser: Any, page_url: str) -> None:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(page_url)
    page.wait_for_selector("body[data-ready=true]")
    assert "serving v0001" in page.text_content("#server")
    assert page.eval_on_selector_all("#canvas option", "os => os.map(o => o.value)") == [
        "home",
        "related",
        "search",
        "browse",
    ]

    # home: a user typed in (regression, issue 9.13: only 50 users could be picked), known ones suggested
    page.select_option("#canvas", "home")
    users = page.eval_on_selector_all("#list-user_id option", "os => os.map(o => o.value).filter(v => v)")
    assert users, "the page suggests users"
    page.fill("#field-user_id", "someone-never-seen")  # any id: unknown users are cold start
    assert len(ask(page)) == 10 and page.text_content("#meta-source") == "source model"
    page.fill("#field-user_id", users[0])
    home = ask(page)
    assert len(home) == 10
    scores = [float(r["score"]) for r in home]
    assert scores == sorted(scores, reverse=True)
    assert page.text_content("#meta-version") == "version v0001"
    assert "took" in page.text_content("#meta-latency")
    assert page.text_content("#meta-fallback") == "fallback none"

    # search box, restricted to one entity type
    page.select_option("#canvas", "search")
    page.fill("#field-query", "space wedding")
    page.select_option("#types", "series")
    found = ask(page)
    assert found and all(r["type"] == "series" for r in found)
    page.select_option("#types", [])
    # which source proposed each entity, and which sources answered: "space" is in titles, so lexical finds some
    words = ask(page)
    assert page.text_content("#meta-sources") == "candidate sources embedding, lexical"
    assert all(r["sources"] for r in words) and any("lexical" in r["sources"] for r in words)

    # related items of a clicked entity
    clicked = found[0]["id"]
    with page.expect_response(lambda r: r.url.endswith("/v1/recommend")):
        page.click(f"#results tbody tr[data-entity-id='{clicked}'] a.entity")
    page.wait_for_function(f"document.querySelector('#field-source_item_id')?.value === '{clicked}'")
    page.wait_for_function(
        "document.querySelectorAll('#results tbody tr').length > 0 && "
        f"!document.querySelector(\"#results tbody tr[data-entity-id='{clicked}']\")"
    )
    assert page.input_value("#canvas") == "related"
    related = rows(page)
    assert related and clicked not in [r["id"] for r in related]  # the source item is excluded

    # category browse
    page.select_option("#canvas", "browse")
    categories = page.eval_on_selector_all("#list-category option", "os => os.map(o => o.value).filter(v => v)")
    assert "drama" in categories
    page.fill("#field-category", "drama")
    assert len(ask(page)) == 10

    # a deadline the model cannot meet: the page shows that a fallback answered
    page.evaluate(
        "() => { const f = window.fetch; window.fetch = (u, o) => { if (o && o.body) { const b = JSON.parse(o.body);"
        " b.timeout_ms = 0.001; o.body = JSON.stringify(b); } return f(u, o); }; }"
    )
    assert ask(page)
    assert page.text_content("#meta-fallback") == "fallback popular (deadline)"
    assert page.text_content("#meta-source") == "source fallback"
    assert not errors, errors


def test_the_api_docs_render_offline(browser: Any, page_url: str) -> None:
    """Regression (issue 9.12): /docs loaded Swagger UI from a CDN and was blank without internet."""
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{page_url}/docs")
    page.wait_for_selector('[data-path="/v1/recommend/batch"]', timeout=20000)  # operations rendered from /openapi.json
    assert requested and all(u.startswith(page_url) for u in requested), [u for u in requested if page_url not in u]


def test_the_page_shows_the_user_the_trial_and_the_operations(
    browser: Any,
    tmp_path_factory: pytest.TempPathFactory,
    two_versions: Registry,
    prepared,  # type: ignore[no-untyped-def]
) -> None:
    """Issue 12 must-have 7: a user's history beside their list, a running trial with both versions side by
    side, and the operations view (versions, lag, dead letters, latency per canvas)."""
    import httpx

    token = "page-test-token-0123456789abcdef"
    root = tmp_path_factory.mktemp("page-ops") / "dep"
    dep = deployed(root, two_versions, prepared.catalogue)
    dep.open()
    dep.stage("v0002")
    dep.trials.start("v0002", "canary", share=0.5)
    settings = ServeSettings(root=root, registry=two_versions.root, admin_token=token)
    try:
        with live_server(create_app(settings, deployment=dep)) as url:
            click = {"event_id": "p1", "user_id": "u-page", "canvas": "home", "entity_id": "m00003", "kind": "click"}
            headers = {"Authorization": f"Bearer {token}"}
            assert httpx.post(f"{url}/v1/events", json=click, headers=headers, timeout=30).status_code == 202
            wait_for(lambda: httpx.get(f"{url}/v1/users/u-page", timeout=30).status_code == 200, timeout=10)

            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            page.wait_for_selector("body[data-ready=true]")
            # operations: both live versions with their states, the stream, the running trial
            page.wait_for_selector("#ops-versions tr[data-version=v0002]")
            states = page.eval_on_selector_all(
                "#ops-versions tbody tr",
                "trs => trs.map(tr => tr.children[0].textContent + ' ' + tr.children[1].textContent)",
            )
            assert states == ["v0001 serving", "v0002 ready"]
            assert "dead letters 0" in page.text_content("#ops-summary")
            assert page.text_content("#trial-name") == "v0002 on canary (50% of users)"

            # the user's profile and history beside their home list
            page.select_option("#canvas", "home")
            page.fill("#field-user_id", "u-page")
            assert len(ask(page)) == 10
            page.wait_for_selector("#user-history")
            assert page.eval_on_selector_all("#user-history li", "ls => ls.map(l => l.textContent)") == ["m00003"]
            assert "v0001 yes" in page.text_content("#user-stores")

            # the two versions of the trial side by side for the same request (admin token)
            page.fill("#token", token)
            page.click("#compare")
            page.wait_for_selector("#overlap")
            assert page.eval_on_selector_all("#side > div[data-version]", "ds => ds.map(d => d.dataset.version)") == [
                "v0001",
                "v0002",
            ]
            assert page.text_content("#overlap").startswith("overlap@k ")
            # latency per canvas from the answers just given, charted as the page polls
            page.wait_for_selector("#ops-latency tr[data-canvas=home] svg.spark", timeout=10000)
            assert not errors, errors
    finally:
        dep.close()
