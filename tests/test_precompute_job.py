"""The precomputed tables as a batch job (``monorec precompute``): scored from a frozen snapshot of the
serving version beside the running owner, written whole into the deployment folder, loaded by a server of
a ``precompute_by = "job"`` environment, and answered exactly as the online path answers. The same job on
Ray Data is in tests/test_ray.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monorec.cli import main
from monorec.deployment import Deployment
from monorec.deployment.snapshot import VersionSnapshot
from monorec.errors import ArtifactError
from monorec.registry import Registry
from monorec.serving.messages import RecommendRequest
from monorec.serving.precomputed import read_tables, tables_path
from serving_fixtures import deployed, engine_for

KNOBS = {
    "mode": "precomputed",
    "precompute": {"home": "user_id", "browse": "category"},
    "precompute_by": "job",
    "precompute_k": 40,
    "precompute_max_keys": 30,
}


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory, two_versions: Registry, prepared) -> Iterator[Deployment]:  # type: ignore[no-untyped-def]
    d = deployed(tmp_path_factory.mktemp("precompute") / "dep", two_versions, prepared.catalogue)
    yield d
    d.close()


def environments_file(folder: Path, name: str = "test", **knobs: object) -> Path:
    lines = [f"[environments.{name}]"]
    for key, value in {**KNOBS, **knobs}.items():
        if isinstance(value, dict):
            value = "{ " + ", ".join(f'{k} = "{v}"' for k, v in value.items()) + " }"
        elif isinstance(value, str):
            value = f'"{value}"'
        lines.append(f"{key} = {value}")
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def precompute(dep: Deployment, *args: str) -> int:
    return main(["precompute", "--root", str(dep.root), "--registry", str(dep.registry.root), *args])


def req(canvas: str, context: dict) -> RecommendRequest:  # type: ignore[type-arg]
    return RecommendRequest(canvas=canvas, context=context, k=5)


def test_a_job_scores_tables_a_server_loads_and_answers_as_online(
    dep: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = dep.versions["v0001"].bundle.featurizer.known_values("user_id")[0]
    with engine_for(dep, **KNOBS) as engine:  # type: ignore[arg-type]
        assert engine.precomputed is not None
        time.sleep(1.5)  # the server looks for a table and finds none: it scores nothing itself
        assert engine.precomputed.version is None and engine.precomputed.refreshes == 0
        assert engine.recommend(req("home", {"user_id": user})).source == "model"

        assert precompute(dep, "--env", "test", "--config", str(environments_file(tmp_path))) == 0
        path = tables_path(dep.root, "test", "v0001")
        assert str(path) in capsys.readouterr().out
        tables, manifest = read_tables(path)
        assert manifest["version"] == "v0001" and manifest["keys"]["home"] == 30 and manifest["scored_by"] == "process"
        assert len(tables) == 30 + manifest["keys"]["browse"]

        deadline = time.monotonic() + 10
        while engine.precomputed.version != "v0001":
            assert time.monotonic() < deadline, "the server did not load the job's table"
            time.sleep(0.05)
        stored = engine.recommend(req("home", {"user_id": user}))
        assert stored.source == "precomputed" and stored.version == "v0001"
        with engine_for(dep) as online:
            for canvas, context in [("home", {"user_id": user}), ("browse", {"category": "drama"})]:
                live = online.recommend(req(canvas, context))
                answer = engine.recommend(req(canvas, context))
                assert answer.source == "precomputed"
                assert [i.entity_id for i in answer.items] == [i.entity_id for i in live.items]
        assert engine.recommend(req("home", {"user_id": "brand-new-user"})).source == "model"

        loads = engine.precomputed.refreshes
        assert precompute(dep, "--env", "test", "--config", str(environments_file(tmp_path))) == 0
        deadline = time.monotonic() + 10
        while engine.precomputed.refreshes == loads:  # a newer table replaces the one held
            assert time.monotonic() < deadline, "the server did not load the newer table"
            time.sleep(0.05)


def test_a_table_is_whole_or_refused(dep: Deployment, tmp_path: Path) -> None:
    assert precompute(dep, "--env", "test", "--config", str(environments_file(tmp_path))) == 0
    path = tables_path(dep.root, "test", "v0001")
    table = path / "tables.parquet"
    table.chmod(0o644)
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF
    table.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"tables\.parquet does not match its checksum"):
        read_tables(path)
    with engine_for(dep, **KNOBS) as engine:  # type: ignore[arg-type]
        assert engine.precomputed is not None
        time.sleep(1.5)
        assert engine.precomputed.version is None, "a corrupt table must not be loaded"
        user = dep.versions["v0001"].bundle.featurizer.known_values("user_id")[0]
        assert engine.recommend(req("home", {"user_id": user})).source == "model"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "no half-written table left"


def test_bad_job_arguments_are_clear_errors(
    dep: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = environments_file(tmp_path)
    online = environments_file(tmp_path, "plain", mode="online", precompute={}, precompute_by="server")
    for args, said in [
        (("--env", "test", "--config", str(job), "--version", "v0009"), "v0009 is not deployed"),
        (("--env", "test", "--config", str(job), "--version", "v0002"), "v0002 is not deployed"),  # published only
        (("--env", "plain", "--config", str(online)), "no canvas -> key field: nothing to score"),
        (("--env", "nope", "--config", str(online)), "nope: unknown environment"),
        (("--env", "test", "--config", str(job), "--root", str(tmp_path / "none")), "not a deployment folder"),
    ]:
        assert precompute(dep, *args) != 0
        assert said in capsys.readouterr().err
    assert not (tmp_path / "none").exists(), "a failed job creates nothing"


def test_a_snapshot_is_the_version_frozen_at_its_checkpoint(dep: Deployment) -> None:
    """What the job scores with: the owner's version as of its checkpoint, in memory of its own."""
    with VersionSnapshot(dep.root, dep.registry) as snap:
        assert snap.version.name == "v0001" and snap.unhealthy_loaders() == {}
        live = dep.versions["v0001"]
        assert snap.version.index.revisions() == live.index.revisions()
        with snap.router.pin() as v, dep.router.pin() as w:
            assert (
                v.recommend("search", {"query": "space"}, k=5).ids == w.recommend("search", {"query": "space"}, k=5).ids
            )
        work = snap.work
    assert not work.exists(), "a snapshot's files are removed when it closes"
