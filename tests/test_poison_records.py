"""No record stops a loader (issue 9.1): what a loader cannot apply goes to the dead letters with its reason
and the stream keeps flowing; a loader that fails for another reason keeps retrying and is reported (stream
status, readiness, metrics); a crash in the middle of an index checkpoint is repaired at open (issue 9.2)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from monorec.artifacts import recover_dirs
from monorec.deployment import Deployment
from monorec.registry import Registry
from monorec.stream.changes import Change
from monorec.stream.loader import Loader
from monorec.stream.log import SqliteChangeLog
from waiting import wait_for


def upsert(entity_id: str, revision: int, title: str = "t") -> str:
    change = {"op": "upsert", "entity_id": entity_id, "revision": revision, "entity_type": "movie"}
    return json.dumps({**change, "title": title, "categories": ["drama"]})


class PickySink:
    """A sink that cannot apply one entity (as a store that cannot hold a value) and records the rest."""

    def __init__(self, poison: str) -> None:
        self.poison = poison
        self.applied: dict[str, int] = {}
        self.checkpoints: list[str] = []
        self.fail_checkpoints = 0

    def apply(self, changes: Sequence[Change]) -> int:
        if any(c.entity_id == self.poison for c in changes):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        for c in changes:
            self.applied[c.entity_id] = c.revision
        return len(changes)

    def checkpoint(self, offset: str) -> None:
        if self.fail_checkpoints:
            self.fail_checkpoints -= 1
            raise OSError("No space left on device")
        self.checkpoints.append(offset)


def test_a_change_the_sink_cannot_apply_is_dead_lettered_and_the_rest_applies(tmp_path: Path) -> None:
    log = SqliteChangeLog(tmp_path / "changes.sqlite")
    log.subscribe("g", "0")
    letters: list[tuple[str, str, str]] = []
    sink = PickySink("poison")
    loader = Loader(
        log, "g", sink, entity_types=["movie"], dead_letter=lambda g, o, p, r: letters.append((o, p, r)), checkpoint_s=0
    )
    offsets = log.append([upsert("a", 1), upsert("poison", 2), upsert("b", 3)])
    loader.catch_up()
    assert sink.applied == {"a": 1, "b": 3}
    assert [(o, "OverflowError" in r) for o, _, r in letters] == [(offsets[1], True)]
    assert log.lag("g") == 0 and sink.checkpoints[-1] == offsets[-1]
    log.append([upsert("poison", 4), upsert("c", 5)])  # later records flow as before
    loader.catch_up()
    assert sink.applied == {"a": 1, "b": 3, "c": 5} and len(letters) == 2
    log.append([upsert("poison", 6)])  # alone in its batch
    loader.catch_up()
    assert len(letters) == 3 and log.lag("g") == 0 and loader.error is None


def test_a_failing_sink_is_retried_reported_and_recovers(tmp_path: Path) -> None:
    log = SqliteChangeLog(tmp_path / "changes.sqlite")
    log.subscribe("g", "0")
    sink = PickySink("none")
    sink.fail_checkpoints = 3  # a full disk for a moment
    loader = Loader(log, "g", sink, entity_types=["movie"], dead_letter=lambda *a: None, checkpoint_s=0)
    loader.start()
    try:
        log.append([upsert("a", 1)])
        wait_for(lambda: loader.error is not None)
        assert not loader.healthy and "No space left" in str(loader.health()["error"])
        wait_for(lambda: loader.healthy and log.lag("g") == 0)  # backoff, retry from the last commit
        assert sink.applied == {"a": 1} and loader.failed_steps >= 1
    finally:
        loader.stop()


@pytest.fixture
def deployment(tmp_path: Path, two_versions: Registry, prepared):  # type: ignore[no-untyped-def]
    dep = Deployment(tmp_path / "dep", two_versions)
    dep.seed_catalogue(prepared.catalogue)
    dep.deploy("v0001")
    dep.open()  # the catalogue's loader runs too, as in a server
    yield dep
    dep.close()


def test_a_revision_past_int64_on_the_log_is_dead_lettered_and_the_stream_flows(
    deployment: Deployment, two_versions: Registry, tmp_path: Path
) -> None:
    """Regression (issue 9.1): such an entry killed the catalogue loader, then every restart."""
    poison = json.dumps({"op": "delete", "entity_id": "pdel", "revision": 10**30})
    deployment.log.append([poison, upsert("after-poison", 7, "Still Flowing")])  # a producer that skipped checks
    wait_for(lambda: "after-poison" in deployment.versions["v0001"].index.revisions())
    wait_for(lambda: deployment.catalogue.entities(["after-poison"]) != {})
    status = deployment.stream_status()
    assert {d["consumer"] for d in status["recent_dead_letters"]} == {"catalogue", "index-v0001"}
    assert all("revision" in d["reason"] for d in status["recent_dead_letters"])
    assert all(h["healthy"] for h in status["loaders"].values()) and deployment.unhealthy_loaders() == {}
    deployment.close()
    with Deployment(tmp_path / "dep", two_versions) as again:  # a restart replays nothing poisonous
        again.open()
        assert "after-poison" in again.versions["v0001"].index.revisions()
        assert len(again.control.dead_letters()) == 2


def test_a_failing_loader_makes_the_deployment_report_it(deployment: Deployment, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def broken(*args: object, **kwargs: object) -> int:
        raise OSError("disk I/O error")

    monkeypatch.setattr(deployment.catalogue, "apply", broken)  # the catalogue's disk fails
    deployment.log.append([upsert("x", 3)])
    wait_for(lambda: "catalogue" in deployment.unhealthy_loaders())
    assert "disk I/O error" in deployment.unhealthy_loaders()["catalogue"]
    assert deployment.stream_status()["loaders"]["catalogue"]["healthy"] is False
    monkeypatch.undo()  # the disk is back: the loader catches up by itself
    wait_for(lambda: deployment.unhealthy_loaders() == {} and deployment.catalogue.entities(["x"]) != {})


def test_a_crash_between_the_two_renames_of_a_checkpoint_is_repaired_at_open(
    deployment: Deployment, two_versions: Registry, tmp_path: Path
) -> None:
    """Regression (issue 9.2): the old checkpoint moved aside, the new one not yet moved in: indexes/ held
    only .v0001.old and a .tmp, and neither deploy nor serve could start."""
    deployment.close()
    indexes = tmp_path / "dep" / "indexes"
    shutil.copytree(indexes / "v0001", indexes / ".v0001.abc123.tmp")  # the new checkpoint, written
    os.replace(indexes / "v0001", indexes / ".v0001.old")  # the old one aside; killed here
    (indexes / ".v0002.def456.tmp").mkdir()  # an unfinished checkpoint of another version
    with Deployment(tmp_path / "dep", two_versions) as dep:
        dep.open()
        with dep.router.pin() as version:
            assert version.name == "v0001" and len(version.recommend("home", {}, k=3).ids) == 3
        assert dep.deploy("v0002").state == "serving"
    assert sorted(p.name for p in indexes.iterdir()) == ["v0001", "v0002"]


def test_recover_dirs_never_restores_an_incomplete_folder(tmp_path: Path) -> None:
    (tmp_path / ".x.old").mkdir()  # no manifest: not a complete checkpoint
    (tmp_path / ".y.old").mkdir()
    (tmp_path / "y").mkdir()
    done = recover_dirs(tmp_path)
    assert not (tmp_path / "x").exists() and (tmp_path / ".x.old").exists()
    assert not (tmp_path / ".y.old").exists() and any("removed .y.old" in d for d in done)
