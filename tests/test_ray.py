"""The distributed paths on a real local Ray cluster (2 CPUs for the pools, no dashboard): the bulk pass of
a version on Ray Data gives the index the in-process pass gives, survives a killed actor, and Ray missing
is a clear error naming the extra."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from monorec.cli import main
from monorec.deployment import Deployment
from monorec.distributed import RayBulkEmbedder, import_ray, ray_session
from monorec.errors import ConfigError
from monorec.registry import Registry


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local cluster for the module; ``ray_session`` uses it as it is and leaves it running."""
    with ray_session("auto", cpus=2):
        yield


def seeded(root: Path, registry: Registry, catalogue) -> Deployment:  # type: ignore[no-untyped-def]
    """A deployment folder with the catalogue and two changes in its log (a new entity, a deletion)."""
    dep = Deployment(root, registry)
    dep.seed_catalogue(catalogue)
    new = {"op": "upsert", "entity_id": "zz-new", "revision": 3, "entity_type": "movie", "title": "Space Robot"}
    dep.publish([{**new, "categories": ["scifi"]}, {"op": "delete", "entity_id": "m00002", "revision": 9}])
    return dep


def test_a_ray_bulk_pass_builds_the_index_the_in_process_pass_builds(
    tmp_path: Path,
    two_versions: Registry,
    prepared,
    ray_cluster,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    local = seeded(tmp_path / "local", two_versions, prepared.catalogue)
    local.open(start_loaders=False)
    local.deploy("v0001")
    seeded(tmp_path / "ray", two_versions, prepared.catalogue).close()
    common = ["--root", str(tmp_path / "ray"), "--registry", str(two_versions.root)]
    assert main(["deploy", "v0001", "--ray", "auto", "--ray-workers", "2", *common]) == 0
    assert "v0001 is serving" in capsys.readouterr().out
    on_ray = Deployment(tmp_path / "ray", two_versions).open(start_loaders=False)  # from its checkpoint
    try:
        a, b = local.versions["v0001"], on_ray.versions["v0001"]
        assert b.index.revisions() == a.index.revisions() == on_ray.catalogue.revisions()
        ids = sorted(a.index.revisions())
        assert "zz-new" in ids and "m00002" not in ids
        np.testing.assert_allclose(b.index.vectors_of(ids), a.index.vectors_of(ids), atol=1e-5)
        np.testing.assert_allclose(b.features.get(ids), a.features.get(ids), atol=1e-5)
        query = {"query": "space robot"}
        with local.router.pin() as va, on_ray.router.pin() as vb:
            assert vb.recommend("search", query, k=5).ids == va.recommend("search", query, k=5).ids
        assert not any((tmp_path / "ray" / "bulk-blocks").rglob("*.parquet")), "the blocks are removed after"
    finally:
        local.close()
        on_ray.close()


def test_a_killed_actor_is_replaced_and_its_batch_retried(
    tmp_path: Path,
    two_versions: Registry,
    prepared,
    monkeypatch: pytest.MonkeyPatch,
    ray_cluster,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("MONOREC_KILL_AT", "ray_embed_batch:2")  # an actor dies (SIGKILL) at its 2nd batch...
    monkeypatch.setenv("MONOREC_KILL_ONCE", str(tmp_path / "killed"))  # ...once
    embedder = RayBulkEmbedder(two_versions.root, "v0001", tmp_path / "blocks", workers=2, block_rows=40)
    dep = seeded(tmp_path / "ray", two_versions, prepared.catalogue).open(start_loaders=False)
    try:
        dep.deploy("v0001", pages=embedder)
        assert (tmp_path / "killed").exists(), "an actor must have been killed"
        assert dep.control.get("v0001").state == "serving"  # type: ignore[union-attr]
        assert dep.versions["v0001"].index.revisions() == dep.catalogue.revisions()  # nothing lost
    finally:
        dep.close()


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
