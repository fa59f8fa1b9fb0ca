"""Users as well as items (issue 12, must-have 1): each deployed version keeps a user store (user id -> its
context tower's encoding of the user's stored profile and history), bulk-filled at deploy under the same
protocol as the index, fed by user changes through the change log, read by requests in ``stored`` mode.
The two backends (in memory + checkpoint, Redis hashes) pass the same contract tests."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from monorec.deployment import Deployment
from monorec.errors import ArtifactError, ChangeError
from monorec.registry import Registry
from monorec.row_table import RowTable
from monorec.serving.messages import RecommendRequest
from monorec.serving.user_context import encode_contexts
from monorec.stream.changes import UserChange, parse_change
from monorec.users import LocalUserStore, UserStore, user_key
from monorec.users.redis_store import RedisUserStore
from monorec.users.seed import user_states
from redis_server import RedisServer
from serving_fixtures import engine_for
from waiting import wait_for

WIDTH = 6


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis-users")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["local", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[UserStore]:
    if request.param == "local":
        yield LocalUserStore(WIDTH)
        return
    made = RedisUserStore(request.getfixturevalue("redis_url"), f"t{time.monotonic_ns()}", WIDTH)
    try:
        yield made
    finally:
        made.drop()
        made.close()


def rows(*values: float) -> np.ndarray:
    return np.array([[v] * WIDTH for v in values], dtype=np.float32)


def test_the_store_contract(store: UserStore) -> None:
    """Newer revisions replace, older and equal ones never do; a batch holding a user twice keeps its newest
    state; unknown users are reported not found (zeros), never an error."""
    assert store.put(["a", "b"], np.array([5, 1]), rows(1.0, 2.0)) == 2
    store.reserve(3000)  # a bulk pass's hint: what is stored stays
    assert store.put(["a"], np.array([4]), rows(9.0)) == 0  # a replayed older state
    assert store.put(["a"], np.array([5]), rows(9.0)) == 0  # the same revision again
    assert store.put(["b", "b"], np.array([3, 2]), rows(7.0, 8.0)) == 1  # newest of the batch wins
    found, got = store.get(["a", "zz", "b"])
    assert found.tolist() == [True, False, True]
    assert got[:, 0].tolist() == [1.0, 0.0, 7.0] and got.shape == (3, WIDTH)
    assert store.revisions() == {"a": 5, "b": 3} and len(store) == 2
    assert store.newer(["a", "b", "c"], np.array([5, 4, 0])) == [1, 2]
    store.drop()
    assert len(store) == 0 and store.get(["a"])[0].tolist() == [False]


def test_a_local_store_round_trips_through_its_checkpoint_and_refuses_another_width(tmp_path: Path) -> None:
    store = LocalUserStore(WIDTH)
    store.put([f"u{i}" for i in range(3000)], np.arange(3000), np.random.default_rng(0).random((3000, WIDTH)))
    store.put(["u7"], np.array([10_000]), rows(0.5))  # an overwritten row: the checkpoint keeps the new one
    store.save(tmp_path)
    loaded = LocalUserStore.load(tmp_path, WIDTH)
    assert loaded.revisions() == store.revisions()
    ids = list(store.revisions())
    assert np.array_equal(loaded.get(ids)[1], store.get(ids)[1])
    assert LocalUserStore.load(tmp_path / "nothing-here", WIDTH).revisions() == {}  # an older checkpoint
    with pytest.raises(ArtifactError, match="wide"):
        LocalUserStore.load(tmp_path, WIDTH + 1)


def test_user_changes_are_validated_where_they_enter() -> None:
    change = UserChange("u1", 3, (("country", "US"),), ("m1", "m2"))
    assert parse_change(change.to_json(), ["movie"]) == change
    bad = [
        ({"op": "user", "revision": 1}, "user_id"),
        ({"op": "user", "user_id": "u\x00", "revision": 1}, "user_id"),
        ({"op": "user", "user_id": "u", "revision": -1}, "revision"),
        ({"op": "user", "user_id": "u", "revision": 1, "profile": {"country": float("nan")}}, "profile.country"),
        ({"op": "user", "user_id": "u", "revision": 1, "profile": {"country": ["US"]}}, "profile.country"),
        ({"op": "user", "user_id": "u", "revision": 1, "profile": "US"}, "profile"),
        ({"op": "user", "user_id": "u", "revision": 1, "history": ["m"] * 201}, "history"),
        ({"op": "user", "user_id": "u", "revision": 1, "history": [""]}, "history"),
        ({"op": "teleport", "user_id": "u", "revision": 1}, "op"),
    ]
    for payload, field in bad:
        with pytest.raises(ChangeError) as caught:
            parse_change(payload, ["movie"])
        assert caught.value.field == field, payload


@pytest.fixture
def users_deployment(tmp_path: Path, two_versions: Registry, prepared) -> Iterator[Deployment]:  # type: ignore[no-untyped-def]
    dep = Deployment(tmp_path / "dep", two_versions)
    dep.seed_catalogue(prepared.catalogue)
    dep.seed_users(user_states(prepared.rows("train"), two_versions.config("v0001")))
    try:
        yield dep
    finally:
        dep.close()


def encode_online(dep: Deployment, version: str, state: UserChange) -> tuple[torch.Tensor, torch.Tensor]:
    sv = dep.versions[version]
    return sv.encode_contexts("home", [{"user_id": state.user_id, **dict(state.profile)}])


def test_a_deploy_bulk_fills_the_user_store_and_events_reach_every_live_version(users_deployment: Deployment) -> None:
    dep = users_deployment
    seeded = dep.catalogue.user_revisions()
    assert len(seeded) > 20
    dep.deploy("v0001")
    dep.open()
    sv1 = dep.versions["v0001"]
    assert sv1.users is not None and len(sv1.users) == len(seeded)  # validation checked every user
    # a stored row is exactly what the context tower makes of the same state online
    some = dep.catalogue.user(sorted(seeded)[3])
    assert some is not None and some.profile
    found, feats, embs = sv1.stored_users("home", [some.user_id])
    online_feats, online_embs = encode_online(dep, "v0001", some)
    assert found.tolist() == [True]
    torch.testing.assert_close(feats, online_feats, rtol=0, atol=1e-6)
    torch.testing.assert_close(embs, online_embs, rtol=0, atol=1e-6)

    # v0002 deploys while users' states stream in: new users and profile changes of known ones
    stop = threading.Event()
    published: list[str] = []

    def stream() -> None:
        i = 0
        while not stop.is_set():
            user = f"new-{i % 30}" if i % 2 else sorted(seeded)[i % len(seeded)]
            country = ["US", "DE", "FR"][i % 3]
            dep.publish([UserChange(user, 10_000 + i, (("country", country),), ())])
            published.append(user)
            i += 1
            time.sleep(0.002)

    writer = threading.Thread(target=stream)
    writer.start()
    try:
        dep.deploy("v0002")
    finally:
        stop.set()
        writer.join()
    assert len(published) > 10, "the stream must run during the deploy"
    dep.sync_catalogue()
    expected = {user_key("home", u): r for u, r in dep.catalogue.user_revisions().items()}
    assert len(expected) > len(seeded)  # the new users were created
    for name in ("v0001", "v0002"):  # serving and standby both follow every user change
        store = dep.versions[name].users
        assert store is not None
        wait_for(lambda store=store: store.revisions() == expected, timeout=20)

    # a profile change reaches every live version within seconds, and the stored row is its encoding
    changed = UserChange(some.user_id, 99_999, (("country", "FR"),), ())
    assert dep.catalogue.user(some.user_id) != changed
    dep.publish([changed])
    for name in ("v0001", "v0002"):
        wait_for(lambda name=name: dep.versions[name].holds_user(some.user_id, 99_999), timeout=10)
        _, feats, embs = dep.versions[name].stored_users("home", [some.user_id])
        online_feats, online_embs = encode_online(dep, name, changed)
        torch.testing.assert_close(embs, online_embs, rtol=0, atol=1e-6)
        before_embs = encode_online(dep, name, some)[1]
        assert not torch.allclose(embs, before_embs), "the profile change must change the encoding"

    # retiring a version drops its user store with it
    dep.retire("v0001")
    assert "v0001" not in dep.versions


def test_stored_mode_answers_from_the_stored_state_and_online_mode_from_the_request(
    users_deployment: Deployment,
) -> None:
    dep = users_deployment
    dep.deploy("v0001")
    dep.open()
    user = sorted(dep.catalogue.user_revisions())[5]
    dep.publish([UserChange(user, 50_000, (("country", "DE"), ("device", "tv")), ())])
    wait_for(lambda: dep.versions["v0001"].holds_user(user, 50_000), timeout=10)

    def scored(engine, context):  # type: ignore[no-untyped-def]
        answer = engine.recommend(RecommendRequest(canvas="home", context=context, k=10))
        assert answer.source == "model"
        return [(i.entity_id, round(i.score or 0.0, 4)) for i in answer.items]

    sv = dep.versions["v0001"]
    profile = {"user_id": user, "country": "DE", "device": "tv"}
    # the context rows of a mixed batch: a stored user takes the stored row (its stored profile, whatever the
    # request says), a user the store lacks and a canvas without a user store go through the tower
    batch = [
        ("home", sv.schema.normalize("home", {"user_id": user, "country": "US"})),
        ("home", sv.schema.normalize("home", {"user_id": "nobody-yet", "country": "US"})),
        ("search", sv.schema.normalize("search", {"query": "robot", "user_id": user})),
    ]
    feats, embs = encode_contexts(sv, batch, {"home", "search"})
    want_feats, want_embs = sv.encode_records([sv.schema.normalize("home", profile), batch[1][1], batch[2][1]])
    torch.testing.assert_close(feats, want_feats, rtol=0, atol=1e-6)
    torch.testing.assert_close(embs, want_embs, rtol=0, atol=1e-6)
    assert not torch.allclose(embs[0], sv.encode_records([batch[0][1]])[1][0])  # the request's US is not used

    with engine_for(dep, user_embeddings=("home",)) as stored, engine_for(dep) as online:
        # the whole request path from the stored row answers exactly as the online path for the same state
        assert scored(stored, profile) == scored(online, profile)
        # and it is the stored state that answers: a request naming only the user still gets the profile's
        # encoding in stored mode (other scores), the bare user's online
        assert scored(stored, {"user_id": user}) != scored(online, {"user_id": user})
        assert scored(stored, {"user_id": "nobody-yet"}) == scored(online, {"user_id": "nobody-yet"})


def test_a_redis_user_store_serves_the_same_deployment(
    tmp_path: Path,
    two_versions: Registry,
    prepared,
    redis_url: str,  # type: ignore[no-untyped-def]
) -> None:
    """The scale-out backend through the whole lifecycle: bulk pass, validation, streaming, restart (the
    hashes outlive the process), retire (the hashes are deleted)."""
    registry = Registry(tmp_path / "registry")
    for name in ("v0001", "v0002"):
        bundle = two_versions.load(name)
        index = dataclasses.replace(bundle.config.index, users="redis", users_redis_url=redis_url)
        bundle = dataclasses.replace(bundle, config=dataclasses.replace(bundle.config, index=index))
        registry.publish(bundle, {"canvases": {}}, force=True)
    root = tmp_path / "dep"
    with Deployment(root, registry) as dep:
        dep.seed_catalogue(prepared.catalogue)
        dep.seed_users(user_states(prepared.rows("train"), registry.config("v0001")))
        dep.deploy("v0001")
        dep.open()
        store = dep.versions["v0001"].users
        assert isinstance(store, RedisUserStore) and len(store) == dep.catalogue.user_count()
        dep.publish([UserChange("fresh-user", 7, (("country", "FR"),), ())])
        wait_for(lambda: dep.versions["v0001"].holds_user("fresh-user", 7), timeout=10)
    with Deployment(root, registry) as dep:  # a restart reads the same hashes
        dep.open()
        assert dep.versions["v0001"].holds_user("fresh-user", 7)
        dep.deploy("v0002")
        assert dep.versions["v0002"].holds_user("fresh-user", 7)  # the bulk pass read the users table
        dep.retire("v0001")
    assert len(RedisUserStore(redis_url, "v0001", 4)) == 0  # retired: its hashes are gone


def test_a_reserved_row_table_takes_the_announced_rows_without_growing() -> None:
    """A bulk pass announces its users: the table makes room once (no doubling, no copy per growth) and
    keeps the rows it held."""
    table = RowTable(WIDTH)
    table.put(["a"], rows(1.0))
    table.reserve(5000)
    buffer = table._rows
    for start in range(0, 4999, 1000):
        keys = [f"u{i}" for i in range(start, min(start + 1000, 4999))]
        table.put(keys, rows(*range(len(keys))))
    assert table._rows is buffer and len(buffer) == 5000 and len(table) == 5000
    assert table.get(["a", "u1001"])[:, 0].tolist() == [1.0, 1.0]


def random_writes(
    table: RowTable, expected: dict[str, np.ndarray], rng: np.random.Generator, steps: int
) -> Iterator[int]:
    """Overwrites and removals of 300 keys (enough rows written for compactions), mirrored in ``expected``;
    yields after each step."""
    for step in range(steps):
        keys = [f"k{int(k)}" for k in rng.choice(300, size=int(rng.integers(1, 40)), replace=False)]
        if step % 5 == 4:
            table.remove(keys)
            for k in keys:
                expected.pop(k, None)
        else:
            values = rng.normal(size=(len(keys), 3)).astype(np.float32)
            table.put(keys, values)
            expected.update(zip(keys, values, strict=True))
        yield step


def test_saved_item_features_hold_each_key_with_its_latest_row_through_overwrites_removals_and_compactions(
    tmp_path: Path,
) -> None:
    """A checkpoint's capture of the item features reads no row and encodes each key once per buffer; the
    file it writes (every row's key, which rows are live, the live rows) loads back as the table was at
    the capture, whatever was written after it and whatever compactions renumbered the rows."""
    from monorec.artifacts import pack_strings
    from monorec.deployment.version import ItemFeatures

    table, expected = ItemFeatures(3), {}
    for step in random_writes(table, expected, np.random.default_rng(1), 300):
        if step % 30 == 0 or step == 299:
            write = table.start_save(tmp_path / f"f{step}.npz")
            at_capture = dict(expected)
            table.put(["late"], np.ones((1, 3), dtype=np.float32))  # after the capture: not in this file
            table.remove(["late"])
            write()
            loaded = ItemFeatures.load(tmp_path / f"f{step}.npz")
            assert len(loaded) == len(at_capture)
            assert all(np.array_equal(loaded.get([k])[0], v) for k, v in at_capture.items())
    # the layout before the row keys still loads
    np.savez(tmp_path / "older.npz", ids=pack_strings(["a", "b"]), feats=np.eye(2, 3, dtype=np.float32))
    assert ItemFeatures.load(tmp_path / "older.npz").get(["b"]).tolist() == [[0.0, 1.0, 0.0]]
    np.savez(tmp_path / "bad.npz", row_keys=pack_strings(["a"]), live=np.ones(2, bool), feats=np.eye(1, 3))
    with pytest.raises(ArtifactError, match="do not load"):
        ItemFeatures.load(tmp_path / "bad.npz")


def test_a_row_table_snapshot_holds_each_key_with_its_latest_row_after_overwrites_removals_and_compactions() -> None:
    """A snapshot copies the buffer at once when no row is dead, and gathers by key otherwise: both must
    give every key its latest row, in the keys' order."""
    table, expected = RowTable(3), {}
    for step in random_writes(table, expected, np.random.default_rng(0), 400):
        if step % 50 == 0 or step == 399:
            snapped, snap_rows = table.snapshot()
            assert sorted(snapped) == sorted(expected) and len(snapped) == len(set(snapped))
            assert all(np.array_equal(row, expected[k]) for k, row in zip(snapped, snap_rows, strict=True))
    fresh = RowTable(3)  # no dead row: the fast copy
    fresh.put(["b", "a"], np.arange(6, dtype=np.float32).reshape(2, 3))
    fresh.put(["c"], np.full((1, 3), 9, dtype=np.float32))
    snapped, snap_rows = fresh.snapshot()
    assert snapped == ["b", "a", "c"] and snap_rows[:, 0].tolist() == [0.0, 3.0, 9.0]
    with pytest.raises(ValueError, match="read-only"):
        snap_rows[0, 0] = -1.0
    # later writes (overwrites, removals, then a compaction as the buffer fills) leave the snapshot as it was
    for step in range(200):
        fresh.put(["b", "a"], np.full((2, 3), 100 + step, dtype=np.float32))
    fresh.remove(["c"])
    fresh.put([f"n{i}" for i in range(1100)], np.ones((1100, 3), dtype=np.float32))
    assert snap_rows[:, 0].tolist() == [0.0, 3.0, 9.0]
    assert fresh.get(["b", "n5"])[:, 0].tolist() == [299.0, 1.0]
