"""The change log contract, against the embedded SQLite log and a real redis-server (Redis Streams)."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

from monorec.deployment import Deployment
from monorec.registry import Registry
from monorec.stream.log import ChangeLog, SqliteChangeLog, offset_key
from monorec.stream.redis_log import RedisChangeLog
from redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def make_log(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A factory: each call is a new client of the same log (a restarted process)."""
    if request.param == "sqlite":
        yield lambda: SqliteChangeLog(tmp_path / "changes.sqlite")
    else:
        server = RedisServer(tmp_path / "redis").start()
        yield lambda: RedisChangeLog(server.url, stream="test:changes")
        server.stop()


def test_offsets_order_groups_commits_and_redelivery(make_log) -> None:  # type: ignore[no-untyped-def]
    log: ChangeLog = make_log()
    assert log.head() == "0"
    first = log.append([f'{{"n": {i}}}' for i in range(5)])
    assert [offset_key(a) < offset_key(b) for a, b in itertools.pairwise(first)] == [True] * 4
    assert log.head() == first[-1]
    log.subscribe("late", log.head())  # sees only what comes after its start
    log.subscribe("early", "0")
    later = log.append(['{"n": 5}', '{"n": 6}'])
    assert [e.payload for e in log.read("late", 10)] == ['{"n": 5}', '{"n": 6}']
    got = log.read("early", 3)
    assert [e.offset for e in got] == first[:3]
    log.commit("early", got[1].offset)  # the third one is read but not committed
    assert log.lag("early") == 5
    log.subscribe("early", "0")  # subscribing again changes nothing

    restarted: ChangeLog = make_log()  # a new process: reads again after the last commit
    again = restarted.read("early", 10)
    assert [e.offset for e in again] == [*first[2:], *later]
    restarted.commit("early", again[-1].offset)
    assert restarted.lag("early") == 0 and restarted.read("early", 10, block_s=0.05) == []
    assert set(restarted.groups()) >= {"early", "late"}
    restarted.drop("late")
    assert "late" not in restarted.groups()


def test_a_restart_reads_what_it_did_not_commit_once_in_batches(make_log) -> None:  # type: ignore[no-untyped-def]
    # more uncommitted entries than one batch: a restarted consumer reads them batch after batch, in order,
    # each once, then the new ones (a loader checkpoints only now and then: it reads many batches first)
    log: ChangeLog = make_log()
    log.subscribe("g", "0")
    offsets = log.append([f'{{"n": {i}}}' for i in range(7)])
    assert [e.offset for e in log.read("g", 10)] == offsets  # delivered, never committed
    restarted: ChangeLog = make_log()
    newer = restarted.append(['{"n": 7}'])
    batches = [[e.offset for e in restarted.read("g", 3)] for _ in range(4)]
    assert batches == [offsets[:3], offsets[3:6], [offsets[6], *newer], []]
    restarted.rewind("g")  # forgets what it read: the uncommitted entries come again
    assert [e.offset for e in restarted.read("g", 10)] == [*offsets, *newer]


def test_a_blocking_read_wakes_up_for_a_new_entry(make_log) -> None:  # type: ignore[no-untyped-def]
    log: ChangeLog = make_log()
    log.subscribe("g", log.head())
    threading.Timer(0.1, lambda: make_log().append(['{"late": true}'])).start()
    started = time.monotonic()
    entries = log.read("g", 10, block_s=5.0)
    assert [e.payload for e in entries] == ['{"late": true}'] and time.monotonic() - started < 4


def test_an_append_through_the_same_sqlite_log_wakes_a_blocked_read_without_a_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # polls so slow that only the wake-up can deliver within the read's 20 s block: a loader in the
    # process that publishes sees a change at once, and an idle one does not poll hundreds of times a second
    from monorec.stream import log as log_module

    monkeypatch.setattr(log_module, "POLL_S", 30.0)
    monkeypatch.setattr(log_module, "POLL_IDLE_S", 30.0)
    log = SqliteChangeLog(tmp_path / "changes.sqlite")
    log.subscribe("g", log.head())
    threading.Timer(0.2, lambda: log.append(['{"woken": true}'])).start()
    started = time.monotonic()
    entries = log.read("g", 10, block_s=20.0)
    assert [e.payload for e in entries] == ['{"woken": true}'] and time.monotonic() - started < 10


def upsert(entity_id: str, revision: int) -> dict:
    change = {"op": "upsert", "entity_id": entity_id, "revision": revision, "entity_type": "movie"}
    return {**change, "title": "t", "categories": []}


def test_loader_survives_a_broker_outage_and_loses_nothing(
    tmp_path: Path,
    redis_server: RedisServer,
    two_versions: Registry,
    prepared,  # type: ignore[no-untyped-def]
) -> None:
    log = RedisChangeLog(redis_server.url)
    with Deployment(tmp_path / "dep", two_versions, log=log) as dep:
        dep.seed_catalogue(prepared.catalogue)
        dep.deploy("v0001")
        sv, loader = dep.versions["v0001"], dep.loaders["v0001"]
        dep.publish([upsert("before", 1)])
        deadline = time.monotonic() + 10
        while "before" not in sv.index.revisions():
            assert time.monotonic() < deadline
            time.sleep(0.01)

        redis_server.stop()  # the broker goes away
        while loader.unavailable_since is None:
            assert time.monotonic() < deadline + 10, "the loader never noticed the outage"
            time.sleep(0.01)
        with sv.index._lock:  # type: ignore[attr-defined]
            pass  # serving goes on meanwhile
        assert sv.recommend("home", {"user_id": "u1"}, k=3).version == "v0001"

        redis_server.start()  # same port, same append-only file
        dep.publish(
            [upsert(f"after{i}", 1) for i in range(20)] + [{"op": "delete", "entity_id": "before", "revision": 2}]
        )
        deadline = time.monotonic() + 20
        while not ({f"after{i}" for i in range(20)} <= set(sv.index.revisions())) or "before" in sv.index.revisions():
            assert time.monotonic() < deadline, "the loader did not catch up after the outage"
            time.sleep(0.02)
        dep.sync_catalogue()
        deadline = time.monotonic() + 10
        while sv.index.revisions() != dep.catalogue.revisions():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # the flag clears when the first successful step returns, which may be just after its changes applied
        deadline = time.monotonic() + 10
        while loader.unavailable_since is not None:
            assert time.monotonic() < deadline, "the loader still reports the broker unavailable"
            time.sleep(0.02)


def test_writes_during_a_broker_outage_are_refused_with_503_and_events_are_kept(
    tmp_path: Path,
    redis_server: RedisServer,
    two_versions: Registry,
    prepared,  # type: ignore[no-untyped-def]
) -> None:
    """The API's writes while the Redis log is away: an entity write publishes nothing and says so (503);
    an event is stored in the journal first, so its retry after the outage is a duplicate that still
    publishes the user's new state: nothing is lost."""
    import httpx

    from live_server import live_server
    from monorec.serving.app import ServeSettings, create_app
    from waiting import wait_for

    token = "outage-test-token-0123456789abcdef"
    auth = {"Authorization": f"Bearer {token}"}
    with Deployment(tmp_path / "dep", two_versions, log=RedisChangeLog(redis_server.url)) as dep:
        dep.seed_catalogue(prepared.catalogue)
        dep.deploy("v0001")
        settings = ServeSettings(root=tmp_path / "dep", registry=two_versions.root, admin_token=token)
        with live_server(create_app(settings, deployment=dep)) as url, httpx.Client(base_url=url, timeout=30) as client:
            redis_server.stop()
            entity = {"entity_type": "movie", "title": "During The Outage", "categories": []}
            refused = client.put("/v1/entities/m-outage", json=entity, headers=auth)
            assert refused.status_code == 503 and "nothing published" in refused.text
            click = {"event_id": "o1", "user_id": "u-outage", "canvas": "home", "entity_id": "m00003", "kind": "click"}
            stored = client.post("/v1/events", json=click, headers=auth)
            assert stored.status_code == 503 and "events stored" in stored.text
            assert (
                client.post("/v1/recommend", json={"canvas": "home", "context": {"user_id": "u1"}}).status_code == 200
            )

            redis_server.start()
            retry = client.post("/v1/events", json=click, headers=auth)
            assert retry.status_code == 202 and retry.json()["duplicates"] == 1
            wait_for(lambda: client.get("/v1/users/u-outage").status_code == 200, timeout=20)
            assert client.get("/v1/users/u-outage").json()["history"] == ["m00003"]
