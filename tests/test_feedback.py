"""Users' events and the loop back to training: every answer has a request id and is journaled with the
context the model saw; POST /v1/events records events idempotently; the journal exports as training logs
that ``prepare`` reads with no glue (monorec.feedback, issue 12)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import polars as pl
import pytest

from live_server import live_server
from monorec.cli import main
from monorec.data.prepared import prepare
from monorec.data.tables import load_dataset
from monorec.deployment import Deployment
from monorec.feedback import FeedbackJournal, export_logs, feedback_rows
from monorec.registry import Registry
from monorec.serving.app import ServeSettings, create_app
from serving_fixtures import deployed
from waiting import wait_for

TOKEN = "feedback-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TS = 1_767_225_600.0  # 2026-01-01


@pytest.fixture
def api(tmp_path: Path, two_versions: Registry, prepared) -> Iterator[tuple[httpx.Client, Deployment, Path]]:  # type: ignore[no-untyped-def]
    dep = deployed(tmp_path / "dep", two_versions, prepared.catalogue)
    settings = ServeSettings(root=tmp_path / "dep", registry=two_versions.root, admin_token=TOKEN)
    with live_server(create_app(settings, deployment=dep)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, dep, tmp_path / "dep" / "feedback.sqlite"
    dep.close()


def _event(event_id: str, request_id: str | None, entity: str, kind: str, **extra: object) -> dict[str, object]:
    body = {"event_id": event_id, "request_id": request_id, "user_id": "u00007", "canvas": "home"}
    return {**body, "entity_id": entity, "kind": kind, "ts": TS, **extra}


def test_events_are_journaled_once_and_export_as_logs_prepare_reads(api, two_versions: Registry, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client, dep, journal_path = api
    home = {"canvas": "home", "context": {"user_id": "u00007", "country": "DE", "device": "tv"}, "k": 5}
    answers = [client.post("/v1/recommend", json=home).json() for _ in range(2)]
    assert all(len(a["request_id"]) == 32 for a in answers)
    assert answers[0]["request_id"] != answers[1]["request_id"]  # the same request twice: two answers
    rid = answers[0]["request_id"]
    shown = [i["entity_id"] for i in answers[0]["items"]]

    events = [_event(f"imp-{e}", rid, e, "impression") for e in shown[:3]]
    events += [_event("click-1", rid, shown[1], "click"), _event("like-1", rid, shown[1], "like")]
    events += [
        _event("watch-1", rid, shown[1], "watch", value=120.0),
        _event("watch-2", rid, shown[1], "watch", value=30.0),
    ]
    assert client.post("/v1/events/batch", json={"events": events}).status_code == 401  # writes need the token
    r = client.post("/v1/events/batch", json={"events": events}, headers=AUTH)
    assert r.status_code == 202, r.text
    assert r.json() == {"stored": 7, "duplicates": 0, "unknown_entities": 0}
    again = client.post("/v1/events/batch", json={"events": events[:4]}, headers=AUTH).json()  # a client's retry
    assert again["stored"] == 0 and again["duplicates"] == 4
    # an event for an entity not in the catalogue (yet) is stored and counted, never an error
    unknown = client.post("/v1/events", json=_event("click-x", None, "not-in-catalogue", "click"), headers=AUTH)
    assert unknown.status_code == 202 and unknown.json()["unknown_entities"] == 1
    metrics = client.get("/metrics").text
    assert 'monorec_events_total{kind="click",outcome="unknown_entity"} 1.0' in metrics
    assert 'monorec_events_total{kind="any",outcome="duplicate"} 4.0' in metrics

    # the events become the user's new state on the change log: within a loader poll the users table holds
    # their clicks as history, and every live version's user store holds that state's encoding
    history = [shown[1], "not-in-catalogue"]  # the user's clicks, oldest first
    wait_for(lambda: client.get("/v1/users/u00007").json().get("history") == history, timeout=10)
    wait_for(lambda: all(client.get("/v1/users/u00007").json()["versions"].values()), timeout=10)
    assert set(client.get("/v1/users/u00007").json()["versions"]) == set(dep.versions)
    # the user's next request reflects what they did: a canvas that reads a history gets their clicks as
    # its history when the request gives none (and answers none of them: already seen)
    browse = {"canvas": "browse", "context": {"user_id": "u00007", "category": "drama"}, "k": 10}
    filled = client.post("/v1/recommend", json=browse).json()
    explicit = client.post("/v1/recommend", json={**browse, "context": {**browse["context"], "history": history}})
    assert [i["entity_id"] for i in filled["items"]] == [i["entity_id"] for i in explicit.json()["items"]]
    assert shown[1] not in {i["entity_id"] for i in filled["items"]}
    stranger = {**browse, "context": {**browse["context"], "user_id": "u-without-events"}}
    assert client.post("/v1/recommend", json=stranger).json()["items"] != filled["items"]

    # bad events are refused with the field named; nothing of the batch is stored
    bad = [
        (_event("b1", rid, shown[0], "watch"), "value"),  # watch needs a value
        (_event("b2", rid, shown[0], "click", ts=TS * 1000), "ts"),  # milliseconds
        (_event("b3", rid, shown[0], "teleport"), "kind"),
        (_event("b4", rid, shown[0], "rating", value=float("nan")), "value"),
        ({**_event("b5", rid, shown[0], "click"), "canvas": "nope"}, "canvas"),
    ]
    for body, field in bad:
        raw = json.dumps({"events": [events[0], body]})  # NaN as Python's JSON writes it (httpx refuses to)
        r = client.post("/v1/events/batch", content=raw, headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 422, (field, r.text)
        assert field in json.dumps(r.json()["detail"]) or "events" in json.dumps(r.json()["detail"])
    too_many = {"events": [_event(f"n{i}", None, shown[0], "click") for i in range(1001)]}
    assert client.post("/v1/events/batch", json=too_many, headers=AUTH).status_code == 422

    # the export: a dataset folder in the documented schema, read by load_dataset and prepare with no glue
    config = two_versions.config("v0001")
    journal = FeedbackJournal(journal_path)
    try:
        summary = export_logs(journal, dep.catalogue.frame(), config, tmp_path / "exported")
    finally:
        journal.close()
    assert summary["rows"] == 4  # 3 shown + the unknown entity's click
    # a row's time is its answer's (today), else its first event's (the click without an answer)
    assert len(summary["days"]) == 2 and "2026-01-01" in summary["days"]
    catalogue, logs = load_dataset(tmp_path / "exported", config)
    mine = logs.filter(pl.col("request_id") == rid).sort("entity_id")
    assert mine.height == 3
    assert set(mine["user_id"]) == {"u00007"} and set(mine["country"]) == {"DE"} and set(mine["device"]) == {"tv"}
    clicked = mine.filter(pl.col("entity_id") == shown[1]).row(0, named=True)
    assert (clicked["clicked"], clicked["liked"], clicked["watch_seconds"]) == (1.0, 1.0, 150.0)
    others = mine.filter(pl.col("entity_id") != shown[1])
    assert others["clicked"].to_list() == [0.0, 0.0] and others["liked"].null_count() == 2
    data = prepare(config, catalogue, logs)
    assert data.manifest["dropped"]["home"].get("unknown_entity") == 1  # counted where prepare cleans

    # the same through the command line (reads only: the server keeps running)
    out = tmp_path / "exported-cli"
    args = ["events", "export", "--root", str(tmp_path / "dep"), "--registry", str(two_versions.root)]
    assert main([*args, "--out", str(out)]) == 0
    assert sum(pl.read_parquet(f).height for f in (out / "logs").glob("feedback-*.parquet")) == 4


def test_users_are_created_by_events_and_profiles_written_through_the_log(api) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = api
    assert client.get("/v1/users/u-brand-new").status_code == 404
    # an event of an unknown user creates the user (empty profile, the click as history)
    click = {"event_id": "new-1", "user_id": "u-brand-new", "canvas": "home", "entity_id": "m00003", "kind": "click"}
    assert client.post("/v1/events", json=click, headers=AUTH).status_code == 202
    wait_for(lambda: client.get("/v1/users/u-brand-new").status_code == 200, timeout=10)
    assert client.get("/v1/users/u-brand-new").json()["history"] == ["m00003"]
    # a profile write replaces the profile, keeps the history, and reaches every live version's user store
    profile = {"profile": {"country": "FR", "device": "tv"}}
    assert client.put("/v1/users/u-brand-new", json=profile).status_code == 401  # writes need the token
    written = client.put("/v1/users/u-brand-new", json=profile, headers=AUTH)
    assert written.status_code == 202, written.text
    revision = written.json()["revision"]

    def current() -> dict[str, object]:
        return client.get("/v1/users/u-brand-new").json()  # type: ignore[no-any-return]

    wait_for(lambda: current()["revision"] == revision and all(current()["versions"].values()), timeout=10)
    assert current()["profile"] == {"country": "FR", "device": "tv"} and current()["history"] == ["m00003"]
    for body, field in [
        ({"profile": {"user_id": "x"}}, "profile.user_id"),  # the user is the key, not a profile field
        ({"profile": {"history": "m1"}}, "profile.history"),
        ({"profile": {"planet": "mars"}}, "profile.planet"),
        ({"profile": {"hour": "noon"}}, "profile.hour"),  # a numeric field
        ({"profile": {f"f{i}": 1 for i in range(33)}}, "profile"),
    ]:
        r = client.put("/v1/users/u-brand-new", json=body, headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][1:] == field.split("."), (field, r.text)
    assert current()["revision"] == revision  # nothing refused was published
    rows = [line for line in client.get("/metrics").text.splitlines() if line.startswith("monorec_user_store_rows{")]
    assert rows and all(float(line.split()[-1]) >= 1 for line in rows)  # each live version's stored users


def test_feedback_rows_follow_the_declared_columns(config) -> None:  # type: ignore[no-untyped-def]
    answers = pl.DataFrame(
        {
            "request_id": ["r1"],
            "ts": [TS],
            "canvas": ["home"],
            "version": ["v0001"],
            "context": [json.dumps({"user_id": "u1", "country": "US", "hour": 21.0})],
            "items": [json.dumps(["a", "b"])],
        }
    )
    events = pl.DataFrame(
        {
            "event_id": ["1", "2", "3", "4"],
            "request_id": ["r1", "r1", None, None],
            "user_id": ["u1", "u1", "u2", "u2"],
            "canvas": ["home", "home", "search", "search"],
            "entity_id": ["a", "b", "c", "c"],
            "kind": ["impression", "click", "click", "like"],
            "value": [None, None, None, None],
            "ts": [TS + 5, TS + 9, TS + 100, TS + 200],
        },
        schema_overrides={"value": pl.Float64},
    )
    rows = feedback_rows(answers, events, config).sort("entity_id")
    assert rows["entity_id"].to_list() == ["a", "b", "c"]
    assert rows["ts"].to_list() == [int(TS), int(TS), int(TS + 100)]  # the answer's time, else the first event's
    assert rows["clicked"].to_list() == [0.0, 1.0, 1.0]
    assert rows["liked"].to_list() == [None, 0.0, 1.0]
    assert rows["hour"].to_list() == [21.0, 21.0, None] and rows["canvas"].to_list() == ["home", "home", "search"]
    assert rows["user_id"].to_list() == ["u1", "u1", "u2"]


def test_a_user_with_a_hundred_thousand_events_reads_only_the_recent_ones(tmp_path: Path) -> None:
    from monorec.feedback import EventRecord

    journal = FeedbackJournal(tmp_path / "feedback.sqlite")
    try:
        for start in range(0, 100_000, 10_000):
            batch = [
                EventRecord(f"e{i}", None, "heavy", "home", f"m{i % 997}", "click", None, TS + i)
                for i in range(start, start + 10_000)
            ]
            assert journal.record_events(batch) == (10_000, 0)
        recent = journal.recent_entities("heavy", "click", 20)
        assert recent == [f"m{i % 997}" for i in range(100_000 - 20, 100_000)]  # oldest first, the last 20
        assert (
            journal.recent_entities("heavy", "like", 20) == [] and journal.recent_entities("nobody", "click", 5) == []
        )
    finally:
        journal.close()


def test_answers_never_wait_for_the_journal_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    """With the journal's file locked by another writer, recording answers returns at once; what does not
    fit the queue is dropped and counted, and what was queued is written once the lock goes."""
    import sqlite3
    import time

    from monorec.feedback import AnswerRecord

    journal = FeedbackJournal(tmp_path / "feedback.sqlite", queue_size=4, linger_s=0.0)  # one answer per batch
    blocker = sqlite3.connect(tmp_path / "feedback.sqlite", timeout=60)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # every other writer now waits
        started = time.monotonic()
        for i in range(50):
            journal.record_answer(AnswerRecord(f"r{i}", TS, "home", "v0001", {"user_id": "u1"}, ["a"]))
        assert time.monotonic() - started < 0.5  # never blocked on the locked file
        assert journal.dropped_answers >= 50 - 4 - 1  # the queue, and the batch the writer holds
        blocker.rollback()
        journal.flush()
        assert journal.answers().height + journal.dropped_answers == 50
    finally:
        blocker.close()
        journal.close()


def test_the_api_accepts_exactly_the_declared_event_kinds() -> None:
    from typing import get_args

    from monorec.config import EVENT_KINDS
    from monorec.serving.messages import EventIn

    assert get_args(EventIn.model_fields["kind"].annotation) == EVENT_KINDS
