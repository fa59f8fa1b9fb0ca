"""The loop from users' events back to the model, end to end: serve v1, users act (events), export the
journal as logs, prepare them with the original logs, train v2, deploy it through the admin API while
events keep flowing, and lose nothing (issue 12)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import httpx
import polars as pl
import pytest

from live_server import live_server
from monorec.data.prepared import prepare
from monorec.data.tables import load_dataset
from monorec.deployment import Deployment
from monorec.feedback import FeedbackJournal, export_logs
from monorec.registry import Registry
from monorec.serving.app import ServeSettings, create_app
from monorec.train import train

TOKEN = "loop-test-token-0123456789abcdef0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _act(client: httpx.Client, user: str, n: int, tag: str) -> tuple[int, int]:
    """``user`` asks for their browse list ``n`` times and acts: an impression of each shown entity, a click
    on the second. Returns (answers, events posted)."""
    posted = 0
    for i in range(n):
        body = {"canvas": "browse", "context": {"user_id": user, "category": "drama"}, "k": 4}
        answer = client.post("/v1/recommend", json=body).json()
        rid, shown = answer["request_id"], [item["entity_id"] for item in answer["items"]]
        events = [
            {
                "event_id": f"{tag}-{user}-{i}-imp-{e}",
                "request_id": rid,
                "user_id": user,
                "canvas": "browse",
                "entity_id": e,
            }
            | {"kind": "impression"}
            for e in shown
        ]
        events.append(events[1] | {"event_id": f"{tag}-{user}-{i}-click", "kind": "click"})
        r = client.post("/v1/events/batch", json={"events": events}, headers=AUTH)
        assert r.status_code == 202, r.text
        posted += len(events)
    return n, posted


@pytest.mark.slow
def test_serve_act_export_retrain_and_deploy_while_events_flow(tmp_path: Path, config, world, two_versions) -> None:  # type: ignore[no-untyped-def]
    catalogue, logs = world
    registry = Registry(tmp_path / "registry")
    registry.publish(two_versions.load("v0001"), {"canvases": {}}, force=True)
    dep = Deployment(tmp_path / "dep", registry)
    dep.seed_catalogue(catalogue)
    dep.deploy("v0001")
    settings = ServeSettings(root=tmp_path / "dep", registry=registry.root, admin_token=TOKEN)
    try:
        with live_server(create_app(settings, deployment=dep)) as url, httpx.Client(base_url=url, timeout=60) as client:
            posted = 0
            for u in range(6):
                posted += _act(client, f"u{u:05d}", 4, "before")[1]

            # the journal as logs, prepared with the original logs: what v2 trains on
            journal = FeedbackJournal(tmp_path / "dep" / "feedback.sqlite")
            try:
                summary = export_logs(journal, dep.catalogue.frame(), config, tmp_path / "feedback")
            finally:
                journal.close()
            assert summary["events"] == posted and summary["rows"] == 6 * 4 * 4
            _, feedback = load_dataset(tmp_path / "feedback", config)
            assert int(feedback["clicked"].sum()) == 6 * 4  # one click per answer
            combined = pl.concat([logs, feedback], how="diagonal_relaxed")
            prepared = prepare(config, catalogue, combined)
            assert prepared.manifest["rows"]["browse"]["test"] >= summary["rows"]  # the newest rows: test split
            cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1, seed=7))
            registry.publish(train(cfg, prepared, progress=False), {"canvases": {}}, force=True)

            # v2 deploys in the background while users keep acting
            stop, errors, during = threading.Event(), [], [0]

            def keep_acting() -> None:
                with httpx.Client(base_url=url, timeout=60) as c:
                    i = 0
                    while not stop.is_set():
                        try:
                            during[0] += _act(c, f"u{i % 6:05d}", 1, f"during-{i}")[1]
                        except Exception as exc:
                            errors.append(exc)
                            return
                        i += 1

            actor = threading.Thread(target=keep_acting)
            actor.start()
            r = client.post("/v1/admin/deploy", json={"version": "v0002"}, headers=AUTH)
            assert r.status_code == 202, r.text
            try:
                for _ in range(600):
                    job = client.get("/v1/admin/versions", headers=AUTH).json()["deploy"]
                    if job["state"] != "running":
                        break
                    threading.Event().wait(0.1)
            finally:
                stop.set()
                actor.join()
            assert job["state"] == "done", job
            assert not errors, errors
            assert during[0] > 0
            answer = client.post("/v1/recommend", json={"canvas": "browse", "context": {"category": "drama"}}).json()
            assert answer["version"] == "v0002"
        # nothing lost: every event posted before and during the deploy is in the journal, once
        journal = FeedbackJournal(tmp_path / "dep" / "feedback.sqlite")
        try:
            events = journal.events()
            assert events.height == posted + during[0]
            assert events["event_id"].n_unique() == events.height
        finally:
            journal.close()
    finally:
        dep.close()
