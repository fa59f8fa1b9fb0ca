"""Serving replicas (monorec.deployment.replica): a read-only copy of a deployment another process owns, fed
by the change log itself, following the owner's switches, rollbacks and retirements."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from monorec.deployment import Deployment
from monorec.deployment.replica import Replica
from monorec.errors import DeployError
from monorec.registry import Registry
from monorec.serving.messages import RecommendRequest
from serving_fixtures import deployed, engine_for
from waiting import wait_for


def upsert(entity_id: str, revision: int) -> dict:
    return {
        "op": "upsert",
        "entity_id": entity_id,
        "revision": revision,
        "entity_type": "movie",
        "title": f"replicated {entity_id}",
        "categories": ["drama"],
    }


def assert_same_answers(owner: Deployment, replica: Replica, item: str, version: str) -> None:
    """The owner and the replica answer home, related and search alike, from ``version``."""
    requests = [
        RecommendRequest(canvas="home", context={"user_id": "u1", "history": [item]}),
        RecommendRequest(canvas="related", context={"source_item_id": item}),
        RecommendRequest(canvas="search", context={"query": "space wedding"}),
    ]
    with engine_for(owner) as at_owner, engine_for(replica) as at_replica:  # type: ignore[arg-type]
        for request in requests:
            want, got = at_owner.recommend(request), at_replica.recommend(request)
            assert got.version == want.version == version
            assert [i.entity_id for i in got.items] == [i.entity_id for i in want.items]


@pytest.fixture
def owner(tmp_path: Path, two_versions: Registry, prepared) -> Iterator[Deployment]:  # type: ignore[no-untyped-def]
    dep = deployed(tmp_path / "dep", two_versions, prepared.catalogue)
    dep.open()
    yield dep
    dep.close()


def test_a_replica_answers_as_the_owner_and_follows_its_changes_and_switches(
    owner: Deployment, two_versions: Registry, prepared
) -> None:  # type: ignore[no-untyped-def]
    with Replica(owner.root, two_versions, name="r1") as replica:
        assert replica.router.current is not None and replica.router.current.name == "v0001"
        assert replica.versions["v0001"].index.revisions() == owner.versions["v0001"].index.revisions()
        item = prepared.catalogue["entity_id"][2]
        assert_same_answers(owner, replica, item, version="v0001")

        owner.publish([upsert("new-1", 3), {"op": "delete", "entity_id": item, "revision": 9}])
        revisions = replica.versions["v0001"].index.revisions
        wait_for(lambda: revisions().get("new-1") == 3 and item not in revisions())

        owner.deploy("v0002")  # staged, validated and switched by the owner; the replica loads its checkpoint
        # the switch returned once the replica served v0002: a request begun now is never on v0001
        assert replica.router.current is not None and replica.router.current.name == "v0002"
        assert replica.versions["v0002"].index.revisions() == owner.versions["v0002"].index.revisions()
        owner.publish([upsert("new-2", 1)])
        for version in ("v0001", "v0002"):  # every live version of the replica gets what streams in
            wait_for(lambda v=version: "new-2" in replica.versions[v].index.revisions())
        head = owner.log.head()  # each version reports the offset it applied (set just after the apply)
        wait_for(lambda: replica.applied_offsets() == {"v0001": head, "v0002": head})

        owner.rollback()
        assert replica.router.current is not None and replica.router.current.name == "v0001"
        owner.retire("v0002")
        wait_for(lambda: "v0002" not in replica.versions)
        assert "replica-r1-v0002" not in owner.log.groups()  # its consumer group went first
        assert [r["version"] for r in replica.status()] == ["v0001"]


def test_a_switch_waits_for_a_replica_still_loading_the_new_version(
    owner: Deployment, two_versions: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from monorec.deployment import lifecycle, replica

    monkeypatch.setattr(lifecycle, "LIVE_WITHIN_S", 1.0)  # silent for 1 s: taken for dead
    monkeypatch.setattr(replica, "HEARTBEAT_S", 0.2)
    load = Replica._load

    def slow_load(self: Replica, version: str) -> None:
        if version == "v0002":
            time.sleep(2.5)  # a large version: its checkpoint takes longer to load than the liveness bound
        load(self, version)

    monkeypatch.setattr(Replica, "_load", slow_load)
    with Replica(owner.root, two_versions, name="r1") as r:
        owner.deploy("v0002")
        # the replica kept beating while it loaded, so the switch waited for it
        assert r.router.current is not None and r.router.current.name == "v0002"


def test_a_switch_waits_for_live_replicas_only_and_not_forever(
    owner: Deployment, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from monorec.deployment import control_plane

    a_minute_ago = time.time() - 60
    with monkeypatch.context() as m:
        m.setattr(control_plane.time, "time", lambda: a_minute_ago)
        owner.control.heartbeat("gone", 1, "v0001")  # killed a minute ago: never heard of since
    started = time.monotonic()
    owner._await_replicas("v0002", timeout_s=5)
    assert time.monotonic() - started < 1  # a dead replica is not waited for
    owner.control.heartbeat("stuck", 2, "v0001")  # alive, but never follows
    started = time.monotonic()
    owner._await_replicas("v0002", timeout_s=0.3)
    assert 0.3 <= time.monotonic() - started < 3
    assert "replicas ['stuck'] do not serve it" in caplog.text
    owner.control.forget_replica("stuck")  # a replica that stops cleanly leaves at once
    assert [r.name for r in owner.control.replicas(60)] == []


def test_a_replica_cut_off_from_the_control_plane_refuses_until_it_has_followed_it_again(
    owner: Deployment, two_versions: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A switch does not wait for a replica silent past the liveness bound: that replica must answer
    nothing (503, not ready) from before the switch can leave it behind until it has read the control
    plane again, so no request begun after the switch is answered by the old version."""
    from monorec.deployment import lifecycle, replica
    from monorec.errors import ServingUnavailable

    monkeypatch.setattr(lifecycle, "LIVE_WITHIN_S", 1.0)
    monkeypatch.setattr(replica, "HEARTBEAT_S", 0.1)
    monkeypatch.setattr(replica, "FENCE_S", 0.6)
    request = RecommendRequest(canvas="search", context={"query": "space wedding"})
    with Replica(owner.root, two_versions, name="r1") as r, engine_for(r) as engine:  # type: ignore[arg-type]
        assert engine.recommend(request).version == "v0001" and r.fenced() is None
        heartbeat = r.control.heartbeat

        def unreachable(*args: object) -> None:
            raise OSError("control plane unreachable")

        r._stop.set()  # its process stalls: it neither follows nor says it is alive
        r._thread.join()  # type: ignore[union-attr]
        r._beats.join()  # type: ignore[union-attr]
        r._stop.clear()
        monkeypatch.setattr(r.control, "heartbeat", unreachable)
        wait_for(lambda: r.fenced() is not None, timeout=5)
        with pytest.raises(ServingUnavailable, match="lost the control plane"):
            engine.recommend(request)
        assert "control-plane" in r.unhealthy_loaders()
        owner.deploy("v0002")  # the owner, no longer hearing from it, switches without it
        assert r.router.current is not None and r.router.current.name == "v0001"  # left behind
        monkeypatch.setattr(r.control, "heartbeat", heartbeat)
        r._heartbeat()  # heard again: still refusing, it has not followed the switch
        with pytest.raises(ServingUnavailable):
            engine.recommend(request)
        r.follow()
        assert r.fenced() is None and r.unhealthy_loaders() == {}
        assert engine.recommend(request).version == "v0002"


def test_a_restarted_replica_replays_from_the_checkpoint_what_it_missed(
    owner: Deployment, two_versions: Registry
) -> None:
    first = Replica(owner.root, two_versions, name="r1").open()
    owner.publish([upsert("before-crash", 1)])
    wait_for(lambda: "before-crash" in first.versions["v0001"].index.revisions())
    # a crash: the replica's threads stop where they are, its consumer group stays committed at the head
    first._stop.set()
    for loader in first.loaders.values():
        loader.stop()
    owner.publish([upsert("while-down", 1)])
    with Replica(owner.root, two_versions, name="r1") as again:
        revisions = again.versions["v0001"].index.revisions()
        assert "before-crash" in revisions and "while-down" in revisions
        assert revisions == owner.versions["v0001"].index.revisions()


def test_a_replica_that_lags_beyond_its_bound_is_not_ready(owner: Deployment, two_versions: Registry) -> None:
    with Replica(owner.root, two_versions, name="r1", max_lag=2) as replica:
        assert replica.unhealthy_loaders() == {}
        replica.loaders["v0001"].stop()  # stuck: changes arrive, nothing applies them
        owner.publish([upsert(f"late-{i}", 1) for i in range(3)])
        assert "replica-r1-v0001" in replica.unhealthy_loaders()
        assert "3 log entries behind" in replica.unhealthy_loaders()["replica-r1-v0001"]


def test_a_replica_needs_a_deployment_folder_and_a_plain_name(tmp_path: Path, two_versions: Registry) -> None:
    with pytest.raises(DeployError, match="not a deployment folder"):
        Replica(tmp_path / "nothing", two_versions, name="r1")
    with pytest.raises(DeployError, match="replica name"):
        Replica(tmp_path, two_versions, name="../r1")


def test_a_checkpoint_snapshot_keeps_its_content_when_the_owner_replaces_the_checkpoint(tmp_path: Path) -> None:
    from monorec.artifacts import atomic_dir, link_snapshot, verify_manifest
    from monorec.errors import ArtifactError

    live = tmp_path / "indexes" / "v0001"
    with atomic_dir(live, manifest={"offset": "7"}) as tmp:
        (tmp / "vectors.bin").write_bytes(b"old vectors")
        (tmp / "lexical").mkdir()
        (tmp / "lexical" / "segment").write_bytes(b"old segment")
    snapshot = tmp_path / "snap"
    assert link_snapshot(live, snapshot)["offset"] == "7"
    with atomic_dir(live, manifest={"offset": "9"}) as tmp:  # the owner's next checkpoint
        (tmp / "vectors.bin").write_bytes(b"new vectors")
    assert verify_manifest(snapshot)["offset"] == "7"  # the snapshot still holds the one it took
    assert (snapshot / "lexical" / "segment").read_bytes() == b"old segment"
    assert link_snapshot(live, snapshot)["offset"] == "9" and not (snapshot / "lexical").exists()
    (live / "vectors.bin").unlink()
    (live / "vectors.bin").write_bytes(b"tampered")  # (never done by atomic_dir: a torn or corrupt copy)
    with pytest.raises(ArtifactError, match="no consistent snapshot"):
        link_snapshot(live, snapshot, attempts=2)


def test_an_unverified_snapshot_still_sees_the_checkpoint_replaced_while_it_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from monorec import artifacts
    from monorec.artifacts import atomic_dir, link_snapshot, verify_manifest

    live = tmp_path / "indexes" / "v0001"

    def checkpoint(offset: str) -> None:
        with atomic_dir(live, manifest={"offset": offset}) as tmp:
            for name in ("a.bin", "b.bin", "c.bin"):
                (tmp / name).write_bytes(f"{name} at {offset}".encode())

    checkpoint("7")
    real_link, swaps = os.link, []

    def link_then_swap(source, target):  # type: ignore[no-untyped-def]
        real_link(source, target)
        if not swaps:  # the owner's next checkpoint lands after the first file is linked
            swaps.append(1)
            checkpoint("9")

    monkeypatch.setattr(artifacts.os, "link", link_then_swap)
    manifest = link_snapshot(live, tmp_path / "snap", verify=False)
    assert manifest["offset"] == "9" and swaps == [1]  # the torn first try was taken again
    assert verify_manifest(tmp_path / "snap")["offset"] == "9"


class NoWrites:
    """A Qdrant client that refuses writes and reads through: proves a follower writes nothing."""

    def __init__(self, client) -> None:  # type: ignore[no-untyped-def]
        self._client = client

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        if name in ("upsert", "delete", "update_vectors", "delete_collection", "create_collection"):
            raise AssertionError(f"a replica called {name} on the owner's collection")
        return getattr(self._client, name)


def test_a_replica_of_a_qdrant_deployment_searches_the_owners_collection_and_writes_nothing(
    tmp_path: Path, qdrant_versions: Registry, prepared
) -> None:  # type: ignore[no-untyped-def]
    owner = deployed(tmp_path / "dep", qdrant_versions, prepared.catalogue)
    owner.open()
    try:
        with Replica(owner.root, qdrant_versions, name="r1") as replica:
            mine = replica.versions["v0001"]
            assert mine.index.collection == owner.versions["v0001"].index.collection  # type: ignore[attr-defined]
            mine.index.client = NoWrites(mine.index.client)  # type: ignore[attr-defined]
            item = prepared.catalogue["entity_id"][2]
            assert_same_answers(owner, replica, item, version="v0001")

            owner.publish([upsert("new-1", 3), {"op": "delete", "entity_id": item, "revision": 9}])
            wait_for(lambda: mine.index.revisions().get("new-1") == 3 and item not in mine.index.revisions())
            assert mine.known(["new-1", item]) == ["new-1"]  # its own item features follow the log
            # the owner wrote the dense and sparse vectors; the replica finds them through its source
            wait_for(lambda: [e for e, _ in mine.sources.lexical.search(["replicated"], 5)[0]] == ["new-1"])
            assert item not in {e for e, _ in mine.sources.lexical.search(["replicated"], 50)[0]}

            owner.deploy("v0002")
            wait_for(lambda: replica.router.current is not None and replica.router.current.name == "v0002")
            owner.rollback()
            owner.retire("v0002")  # the owner drops the collection; the replica only lets its copy go
            wait_for(lambda: "v0002" not in replica.versions)
            assert replica.router.current is not None and replica.router.current.name == "v0001"
    finally:
        owner.close()
