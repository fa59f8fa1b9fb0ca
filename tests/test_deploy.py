"""Deployments: stage -> validate -> switch -> standby/rollback -> retire, under streaming changes."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from monorec.deployment import Deployment
from monorec.errors import ChangeError, DeployError
from monorec.registry import Registry
from monorec.stream.changes import Change
from waiting import wait_for


def upsert(entity_id: str, revision: int, title: str = "fresh title", kind: str = "movie") -> dict:
    return {
        "op": "upsert",
        "entity_id": entity_id,
        "revision": revision,
        "entity_type": kind,
        "title": title,
        "categories": ["drama"],
    }


@pytest.fixture
def deployment(tmp_path: Path, two_versions: Registry, prepared):  # type: ignore[no-untyped-def]
    dep = Deployment(tmp_path / "dep", two_versions)
    dep.seed_catalogue(prepared.catalogue)
    yield dep
    dep.close()


def test_first_deploy_serves_exactly_the_catalogue(deployment: Deployment, prepared) -> None:  # type: ignore[no-untyped-def]
    state = deployment.deploy("v0001")
    assert state.state == "serving"
    sv = deployment.versions["v0001"]
    assert sv.index.revisions() == deployment.catalogue.revisions()
    assert len(sv.index) == prepared.catalogue.height
    with deployment.router.pin() as version:
        answer = version.recommend("home", {"user_id": "u1"}, k=5)
    assert answer.version == "v0001" and len(answer.ids) == 5
    assert answer.scores == sorted(answer.scores, reverse=True)
    row = next(r for r in deployment.status() if r["version"] == "v0001")
    assert row["state"] == "serving" and row["entities"] == prepared.catalogue.height


def test_streamed_changes_reach_the_serving_index_and_bad_ones_are_dead_lettered(deployment: Deployment) -> None:
    deployment.deploy("v0001")
    sv = deployment.versions["v0001"]
    deployment.log.append(
        ['{"op": "upsert", "entity_id": "x"', '{"op":"upsert","entity_id":"y","revision":1,"entity_type":"spaceship"}']
    )
    deployment.publish([upsert("new-1", 5), {"op": "delete", "entity_id": "m00001", "revision": 9}])
    wait_for(lambda: "new-1" in sv.index.revisions() and "m00001" not in sv.index.revisions())
    letters = deployment.control.dead_letters("index-v0001")
    assert [("JSON" in d.reason, "entity_type" in d.reason) for d in letters] == [(True, False), (False, True)]
    with pytest.raises(ChangeError, match="entity_type"):
        deployment.publish([upsert("bad", 1, kind="spaceship")])
    wait_for(lambda: deployment.loaders["v0001"].lag() == 0)


def test_deploy_under_streaming_then_rollback_and_retire(deployment: Deployment) -> None:
    deployment.deploy("v0001")
    stop = threading.Event()
    published: list[int] = []

    def stream() -> None:
        i = 0
        while not stop.is_set():
            deployment.publish([upsert(f"s{i % 40}", i + 1, title=f"streamed {i}")])
            if i % 7 == 3:
                deployment.publish([{"op": "delete", "entity_id": f"s{(i + 5) % 40}", "revision": i + 1}])
            published.append(i)
            i += 1
            time.sleep(0.002)

    writer = threading.Thread(target=stream)
    writer.start()
    try:
        deployment.deploy("v0002")
    finally:
        stop.set()
        writer.join()
    assert len(published) > 10, "the stream must run during the deploy"
    assert deployment.control.pointer("serving") == "v0002"
    states = {r["version"]: r["state"] for r in deployment.status()}
    assert states == {"v0001": "standby", "v0002": "serving"}
    deployment.sync_catalogue()
    expected = deployment.catalogue.revisions()
    for name in ("v0001", "v0002"):  # both live versions end with exactly the catalogue
        wait_for(lambda name=name: deployment.versions[name].index.revisions() == expected)

    assert deployment.rollback() == "v0001"
    with deployment.router.pin() as version:
        assert version.name == "v0001"
    with pytest.raises(DeployError, match="serving"):
        deployment.retire("v0001")
    deployment.retire("v0002")
    assert {r["version"]: r["state"] for r in deployment.status()}["v0002"] == "retired"
    assert not (deployment.root / "indexes" / "v0002").exists()
    assert "index-v0002" not in deployment.log.groups()
    with pytest.raises(DeployError, match="standby"):
        deployment.rollback()


def test_restart_resumes_the_serving_version(tmp_path: Path, two_versions: Registry, prepared) -> None:  # type: ignore[no-untyped-def]
    with Deployment(tmp_path / "dep", two_versions) as dep:
        dep.seed_catalogue(prepared.catalogue)
        dep.deploy("v0001")
        with pytest.raises(DeployError, match="owned by another"):
            Deployment(tmp_path / "dep", two_versions)
        before = dep.versions["v0001"].recommend("search", {"query": "space"}, k=5)
        dep.publish([upsert("late", 3)])
    with Deployment(tmp_path / "dep", two_versions) as dep:  # e.g. after a restart
        dep.open()
        assert "late" in dep.versions["v0001"].index.revisions()
        with dep.router.pin() as version:
            after = version.recommend("search", {"query": "space"}, k=5)
        assert after.version == "v0001"
        assert [i for i in before.ids if i != "late"][:3] == [i for i in after.ids if i != "late"][:3]


@pytest.mark.parametrize(
    ("damage", "error"),
    [("vectors.faiss", "checksum"), ("lexical/meta.json", "checksum"), ("no lexical", "lexical index missing")],
)
def test_a_corrupt_index_fails_validation_and_never_serves(deployment: Deployment, damage: str, error: str) -> None:
    deployment.deploy("v0001")
    deployment.stage("v0002")
    deployment.versions.pop("v0002").close()  # as after a restart: the switch reloads it from disk
    deployment.loaders.pop("v0002")
    checkpoint = deployment.root / "indexes" / "v0002"
    if damage == "no lexical":  # e.g. a checkpoint written without one: consistent, but incomplete
        shutil.rmtree(checkpoint / "lexical")
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        manifest["files"] = {f: h for f, h in manifest["files"].items() if not f.startswith("lexical/")}
        (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    else:
        (checkpoint / damage).write_bytes(b"not an index")
    with pytest.raises(DeployError, match=error):
        deployment.switch("v0002")
    assert deployment.control.get("v0002").state == "failed"
    with deployment.router.pin() as version:
        assert version.name == "v0001"
    deployment.deploy("v0002")  # a failed version is staged again from scratch
    assert deployment.control.pointer("serving") == "v0002"


def test_a_qdrant_backed_deployment_streams_switches_and_retires(
    tmp_path: Path, qdrant_versions: Registry, prepared
) -> None:  # type: ignore[no-untyped-def]
    """The same lifecycle with one Qdrant collection per version (qdrant-client's local mode), the lexical
    index as sparse vectors in it."""
    from monorec.index.qdrant_index import qdrant_client_for

    registry = qdrant_versions
    with Deployment(tmp_path / "dep", registry) as dep:
        dep.seed_catalogue(prepared.catalogue)
        dep.deploy("v0001")
        dep.publish([upsert("q-new", 4), {"op": "delete", "entity_id": "m00001", "revision": 4}])
        dep.deploy("v0002")
        client = qdrant_client_for(str(dep.root / "qdrant"))
        aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
        assert aliases["monorec_serving"] == "monorec_v0002"
        dep.sync_catalogue()
        expected = dep.catalogue.revisions()
        for name in ("v0001", "v0002"):
            wait_for(lambda name=name: dep.versions[name].index.revisions() == expected)
            assert len(dep.versions[name].index) == len(expected)
            lexical = dep.versions[name].sources.lexical
            assert type(lexical).__name__ == "QdrantLexical" and len(lexical) == len(expected)
            assert "q-new" in {e for e, _ in lexical.search(["fresh title"], 5)[0]}
            assert not lexical.holds("m00001")
        with dep.router.pin() as version:
            answer = version.recommend("browse", {"category": "drama"}, k=5)
        assert answer.version == "v0002" and len(answer.ids) == 5
        dep.retire("v0001")
        assert not client.collection_exists("monorec_v0001")


def test_an_hnswlib_backed_deployment_streams_and_restarts_from_its_checkpoint(
    tmp_path: Path, two_versions: Registry, prepared
) -> None:  # type: ignore[no-untyped-def]
    """``[index] kind = "hnswlib"``: bulk load, streamed upserts and deletes, a checkpoint, and a restart
    that answers as before."""
    import dataclasses

    from monorec.config import IndexSpec
    from monorec.index.hnswlib_index import HnswlibIndex

    registry = Registry(tmp_path / "registry")
    bundle = two_versions.load("v0001")
    index = IndexSpec(kind="hnswlib", hnsw_m=16, ef_construction=100)
    hnsw = dataclasses.replace(bundle, config=dataclasses.replace(bundle.config, index=index))
    registry.publish(hnsw, {"canvases": {}}, force=True)
    with Deployment(tmp_path / "dep", registry) as dep:
        dep.seed_catalogue(prepared.catalogue)
        dep.deploy("v0001")
        assert isinstance(dep.versions["v0001"].index, HnswlibIndex)
        dep.publish([upsert("h-new", 4), {"op": "delete", "entity_id": "m00001", "revision": 4}])
        dep.sync_catalogue()
        expected = dep.catalogue.revisions()
        wait_for(lambda: dep.versions["v0001"].index.revisions() == expected)
        with dep.router.pin() as version:
            before = version.recommend("browse", {"category": "drama"}, k=5).ids
            vector = version.index.vectors_of(["h-new"])
            assert version.index.search(vector, 1).row(0)[0][0] == "h-new"
            assert "m00001" not in {e for e, _ in version.index.search(vector, 200).row(0)}
    with Deployment(tmp_path / "dep", registry) as dep:  # from the checkpoint
        dep.open(start_loaders=False)
        sv = dep.versions["v0001"]
        assert isinstance(sv.index, HnswlibIndex) and sv.index.revisions() == expected
        with dep.router.pin() as version:
            assert version.recommend("browse", {"category": "drama"}, k=5).ids == before


def test_lexical_source_follows_the_stream_and_a_restart(tmp_path: Path, two_versions: Registry, prepared) -> None:  # type: ignore[no-untyped-def]
    # an entity added as "Space Robot Zyx" must be proposed for "zyx" (a word no other title has) by the
    # version that serves, after the stream brought it, and again after a restart; gone once deleted
    def lexical(sv, query):  # type: ignore[no-untyped-def]
        return {e for e, scores in sv.propose("search", [{"query": query}])[0][0].items() if scores[1] > 0}

    with Deployment(tmp_path / "dep", two_versions) as dep:
        dep.seed_catalogue(prepared.catalogue)
        dep.deploy("v0001")
        sv = dep.versions["v0001"]
        dep.publish([upsert("zyx-1", 4, title="Space Robot Zyx")])
        wait_for(lambda: lexical(sv, "zyx") == {"zyx-1"})
        assert "zyx-1" in lexical(sv, "space robot")
        dep.publish([upsert("zyx-2", 5, title="Zyx Zyx Returns")])
        wait_for(lambda: lexical(sv, "zyx") == {"zyx-1", "zyx-2"})
    with Deployment(tmp_path / "dep", two_versions) as dep:
        dep.open()
        sv = dep.versions["v0001"]
        assert lexical(sv, "zyx") == {"zyx-1", "zyx-2"}
        dep.publish([{"op": "delete", "entity_id": "zyx-1", "revision": 9}])
        wait_for(lambda: lexical(sv, "zyx") == {"zyx-2"})
        assert "zyx-1" not in sv.recommend("search", {"query": "zyx"}, k=50).ids


def test_a_stale_replay_changes_neither_features_nor_text(deployment: Deployment) -> None:
    # the index refuses an older revision; the version's features and lexical index must refuse it too
    deployment.deploy("v0001")
    sv = deployment.versions["v0001"]
    deployment.publish([upsert("twice", 7, title="Qwv Newer")])
    # the loader commits the lexical index after the vector index: wait for both
    wait_for(lambda: "twice" in sv.index.revisions() and sv.sources.lexical.search(["qwv"], 5) != [[]])
    features = sv.features.get(["twice"]).copy()

    assert sv.apply([Change("upsert", "twice", 3, "movie", title="Pxq Older", categories=("comedy",))]) == 0
    assert sv.index.revisions()["twice"] == 7
    assert (sv.features.get(["twice"]) == features).all()
    assert sv.sources.lexical.search(["pxq"], 5) == [[]]
    assert [e for e, _ in sv.sources.lexical.search(["qwv"], 5)[0]] == ["twice"]


def test_a_change_applied_again_after_failing_between_the_index_and_the_text_completes_the_text(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the loader applies a batch again when it fails (whole, or one change at a time): a write the vector
    # index took before the lexical index failed must reach the lexical index then, not be skipped as done
    deployment.deploy("v0001")
    sv = deployment.versions["v0001"]
    lexical = sv.sources.lexical

    def fails_once(method):  # type: ignore[no-untyped-def]
        failed = []

        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            if not failed:
                failed.append(True)
                raise RuntimeError("the lexical index failed once")
            return method(*args, **kwargs)

        return call

    monkeypatch.setattr(lexical, "upsert", fails_once(lexical.upsert))
    monkeypatch.setattr(lexical, "delete", fails_once(lexical.delete))
    added = Change("upsert", "healed", 5, "movie", title="Wqz Healed", categories=("drama",))
    with pytest.raises(RuntimeError):
        sv.apply([added])
    assert sv.index.revisions()["healed"] == 5 and lexical.search(["wqz"], 5) == [[]]
    sv.apply([added])
    assert [e for e, _ in lexical.search(["wqz"], 5)[0]] == ["healed"]

    deleted = Change("delete", "healed", 6)
    with pytest.raises(RuntimeError):
        sv.apply([deleted])
    assert "healed" not in sv.index.revisions() and lexical.holds("healed")
    sv.apply([deleted])  # with deploy.lexical_commit_s > 0, a paced commit's timer commits it
    wait_for(lambda: not lexical.holds("healed"), timeout=5)
    assert lexical.ids() == set(sv.index.revisions())
