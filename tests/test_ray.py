"""The distributed paths on a real local Ray cluster (2 CPUs for the pools, no dashboard): the bulk pass of
a version on Ray Data gives the index the in-process pass gives and survives a killed actor, as do the
precomputed tables scored on Ray; training on
two Ray Train workers gives a model the release gate accepts; Ray missing is a clear error naming the
extra."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from monorec.cli import main
from monorec.deployment import Deployment
from monorec.distributed import import_ray, ray_session, train_on_ray
from monorec.errors import ConfigError
from monorec.evaluation.evaluate import evaluate_bundle
from monorec.registry import Registry
from monorec.serving.precomputed import read_tables, tables_path
from monorec.stream.changes import UserChange
from monorec.users import user_key


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local cluster for the module; ``ray_session`` uses it as it is and leaves it running."""
    with ray_session("auto", cpus=2):
        yield


USERS = [
    UserChange(f"u{i}", 1, (("country", "US" if i % 2 else "DE"),), tuple(f"m{j:05d}" for j in range(i % 5)))
    for i in range(50)
]


def seeded(root: Path, registry: Registry, catalogue) -> Deployment:  # type: ignore[no-untyped-def]
    """A deployment folder with the catalogue, users, and two changes in its log (a new entity, a deletion)."""
    dep = Deployment(root, registry)
    dep.seed_catalogue(catalogue)
    dep.seed_users(USERS)
    new = {"op": "upsert", "entity_id": "zz-new", "revision": 3, "entity_type": "movie", "title": "Space Robot"}
    dep.publish([{**new, "categories": ["scifi"]}, {"op": "delete", "entity_id": "m00002", "revision": 9}])
    return dep


def test_a_ray_bulk_pass_builds_the_index_the_in_process_pass_builds(
    tmp_path: Path,
    two_versions: Registry,
    prepared,
    ray_cluster,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    """Through the command line, with an actor of the pool killed (SIGKILL) at its second batch: Ray
    replaces it and retries the batch, and nothing is lost."""
    local = seeded(tmp_path / "local", two_versions, prepared.catalogue)
    local.open(start_loaders=False)
    local.deploy("v0001")
    seeded(tmp_path / "ray", two_versions, prepared.catalogue).close()
    common = ["--root", str(tmp_path / "ray"), "--registry", str(two_versions.root)]
    monkeypatch.setenv("MONOREC_KILL_AT", "ray_embed_batch:2")  # passed on to the actors
    monkeypatch.setenv("MONOREC_KILL_ONCE", str(tmp_path / "killed"))  # one actor dies, its successor goes on
    assert main(["deploy", "v0001", "--ray", "auto", "--ray-workers", "2", *common]) == 0
    assert "v0001 is serving" in capsys.readouterr().out
    assert (tmp_path / "killed").exists(), "an actor must have been killed"
    on_ray = Deployment(tmp_path / "ray", two_versions).open(start_loaders=False)  # from its checkpoint
    try:
        a, b = local.versions["v0001"], on_ray.versions["v0001"]
        assert b.index.revisions() == a.index.revisions() == on_ray.catalogue.revisions()
        ids = sorted(a.index.revisions())
        assert "zz-new" in ids and "m00002" not in ids
        np.testing.assert_allclose(b.index.vectors_of(ids), a.index.vectors_of(ids), atol=1e-5)
        np.testing.assert_allclose(b.features.get(ids), a.features.get(ids), atol=1e-5)
        keys = [user_key("home", u.user_id) for u in USERS]  # the users' bulk pass ran on Ray too
        assert a.users is not None and b.users is not None
        (found_a, rows_a), (found_b, rows_b) = a.users.get(keys), b.users.get(keys)
        assert found_a.all() and found_b.all()
        np.testing.assert_allclose(rows_b, rows_a, atol=1e-5)
        query = {"query": "space robot"}
        with local.router.pin() as va, on_ray.router.pin() as vb:
            assert vb.recommend("search", query, k=5).ids == va.recommend("search", query, k=5).ids
        assert not any((tmp_path / "ray" / "bulk-blocks").rglob("*.parquet")), "the blocks are removed after"
    finally:
        local.close()
        on_ray.close()


def test_precomputed_tables_scored_on_ray_equal_those_scored_in_process(
    tmp_path: Path,
    two_versions: Registry,
    prepared,
    ray_cluster,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    """``monorec precompute --ray`` beside the owner, with an actor killed (SIGKILL) at its second batch:
    the retried batch leaves the table the in-process job writes (same keys, same answers)."""
    dep = seeded(tmp_path / "dep", two_versions, prepared.catalogue)
    dep.open(start_loaders=False)
    dep.deploy("v0001")
    try:
        envs = tmp_path / "envs.toml"
        envs.write_text(
            '[environments.batch]\nmode = "precomputed"\nprecompute_by = "job"\nprecompute_k = 20\n'
            'precompute_max_keys = 40\nprecompute = { home = "user_id", related = "source_item_id" }\n'
        )
        common = ["precompute", "--env", "batch", "--config", str(envs)]
        common += ["--root", str(tmp_path / "dep"), "--registry", str(two_versions.root)]
        path = tables_path(tmp_path / "dep", "batch", "v0001")
        assert main(common) == 0
        in_process, _ = read_tables(path)
        monkeypatch.setenv("MONOREC_KILL_AT", "ray_score_batch:2")
        monkeypatch.setenv("MONOREC_KILL_ONCE", str(tmp_path / "killed"))
        assert main([*common, "--ray", "auto", "--ray-workers", "2"]) == 0
        assert (tmp_path / "killed").exists(), "an actor must have been killed"
        on_ray, manifest = read_tables(path)
        assert manifest["scored_by"] == "ray" and manifest["keys"] == {"home": 40, "related": 40}
        assert on_ray.keys() == in_process.keys() and len(on_ray) == 80
        for key, answer in in_process.items():
            a, b = json.loads(answer), json.loads(on_ray[key])
            assert [e["entity_id"] for e in b] == [e["entity_id"] for e in a], key
            np.testing.assert_allclose([e["score"] for e in b], [e["score"] for e in a], atol=1e-5)
        assert not (tmp_path / "dep" / "precompute-blocks" / "batch").exists(), "the key blocks are removed"
    finally:
        dep.close()


def test_training_on_two_ray_train_workers_gives_a_model_that_passes_the_gate(
    tmp_path: Path,
    config,
    prepared,
    trained,
    ray_cluster,  # type: ignore[no-untyped-def]
) -> None:
    folder = prepared.save(tmp_path / "prepared")
    bundle = train_on_ray(config, folder, workers=2)
    assert bundle.meta["ray_workers"] == 2 and len(bundle.meta["history"]) == config.train.epochs
    assert bundle.meta["history"][-1]["loss"] < bundle.meta["history"][0]["loss"], "the workers learned"
    registry = Registry(tmp_path / "registry")
    registry.publish(trained, evaluate_bundle(trained, prepared, "test"))  # one process, the live version
    assert registry.publish(bundle, evaluate_bundle(bundle, prepared, "test")) == "v0002"  # the gate accepts it


def test_ray_missing_is_a_clear_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"monorec\[ray\]"):
        import_ray()
    with pytest.raises(ConfigError, match=r"monorec\[ray\]"), ray_session("auto"):
        pass
    assert main(["deploy", "v0001", "--ray", "auto", "--root", "nowhere", "--registry", "nowhere"]) == 2
    assert "monorec[ray]" in capsys.readouterr().err
    assert main(["train", "--prepared", "nowhere", "--out", "nowhere", "--ray", "auto"]) == 2
    assert "monorec[ray]" in capsys.readouterr().err
