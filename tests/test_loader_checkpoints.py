"""A loader's periodic checkpoint is captured on its thread and written on another (issue 13): changes that
arrive meanwhile are applied at once; the offset commits only once the write is durable; a failed write
commits nothing and is written again; the checkpoint holds the moment of its capture, whatever is applied
while it is written."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from monorec.deployment import Deployment
from monorec.deployment.sinks import VersionSink
from monorec.deployment.version import ItemFeatures
from monorec.index import load_index
from monorec.registry import Registry
from monorec.retrieval import LexicalIndex
from monorec.stream.changes import Change
from monorec.stream.loader import Loader
from monorec.stream.log import SqliteChangeLog
from waiting import wait_for


def upsert(entity_id: str, revision: int) -> str:
    change = {"op": "upsert", "entity_id": entity_id, "revision": revision, "entity_type": "movie"}
    return json.dumps({**change, "title": f"title {entity_id}", "categories": ["drama"]})


class SlowSink:
    """Records what it applies; its checkpoints capture at once and write when ``release`` is set."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.durable: list[tuple[str, tuple[str, ...]]] = []  # (offset, what was applied at its capture)
        self.release = threading.Event()
        self.fail_next_write = False

    def apply(self, changes: Sequence[Change]) -> int:
        self.applied.extend(c.entity_id for c in changes)
        return len(changes)

    def checkpoint(self, offset: str) -> None:
        self.durable.append((offset, tuple(self.applied)))

    def start_checkpoint(self, offset: str) -> Callable[[], None]:
        captured = (offset, tuple(self.applied))

        def finish() -> None:
            self.release.wait(10)
            if self.fail_next_write:
                self.fail_next_write = False
                raise OSError("No space left on device")
            self.durable.append(captured)

        return finish


def loader_on(tmp_path: Path, sink: SlowSink) -> tuple[SqliteChangeLog, Loader]:
    log = SqliteChangeLog(tmp_path / "changes.sqlite")
    log.subscribe("g", "0")
    return log, Loader(log, "g", sink, entity_types=["movie"], dead_letter=lambda *a: None, checkpoint_s=0)


def test_changes_are_applied_while_a_checkpoint_is_written_and_its_offset_commits_after(tmp_path: Path) -> None:
    sink = SlowSink()
    log, loader = loader_on(tmp_path, sink)
    first = log.append([upsert("a", 1), upsert("b", 2)])
    assert loader.step() == 2  # applies, then captures its checkpoint; the write waits for ``release``
    second = log.append([upsert("c", 3)])
    assert loader.step() == 1 and sink.applied == ["a", "b", "c"]  # applied while the write is in flight
    assert sink.durable == [] and log.lag("g") == 3  # nothing committed before the write is durable
    assert loader.lag() == 0  # every entry is applied
    assert loader.health()["checkpoint_writing"] is True
    sink.release.set()
    wait_for(lambda: len(sink.durable) == 1)
    assert log.lag("g") == 3  # durable, not yet committed: the loader's thread commits (every log call is its)
    loader.step()  # the step after the write ends commits its offset (and, checkpoint_s being 0, starts the next)
    assert sink.durable[0] == (first[-1], ("a", "b")) and log.lag("g") <= 1 and loader.lag() == 0
    loader.checkpoint()  # an explicit checkpoint is durable and committed when it returns
    assert sink.durable[-1] == (second[-1], ("a", "b", "c")) and log.lag("g") == 0
    health = loader.health()
    assert health["checkpoint_writing"] is False and health["checkpoint_age_s"] < 1.0


def test_a_failed_checkpoint_write_commits_nothing_and_the_loader_writes_it_again(tmp_path: Path) -> None:
    sink = SlowSink()
    sink.fail_next_write = True
    log, loader = loader_on(tmp_path, sink)
    offsets = log.append([upsert("a", 1)])
    loader.start()
    try:
        sink.release.set()
        # the failed write is reported like a failed step, then the loader replays from the last commit
        wait_for(lambda: loader.failed_steps == 1 and loader.healthy and log.lag("g") == 0)
        assert sink.durable and sink.durable[-1][0] == offsets[-1] and "a" in sink.durable[-1][1]
    finally:
        loader.stop()


def test_a_version_checkpoint_holds_the_moment_of_its_capture(tmp_path: Path, two_versions: Registry, prepared) -> None:  # type: ignore[no-untyped-def]
    with Deployment(tmp_path / "dep", two_versions) as dep:
        dep.seed_catalogue(prepared.catalogue)
        dep.deploy("v0001")
        version = dep.versions["v0001"]
        kept, gone = sorted(version.index.revisions())[:2]
        sink = VersionSink(version, tmp_path / "checkpoint", version.bundle.config)
        finish = sink.start_checkpoint("7-0")
        assert finish is not None and not (tmp_path / "checkpoint").exists()  # captured, nothing written yet
        # applied after the capture, before the write: none of it may reach this checkpoint
        version.apply(
            [
                Change("upsert", "after-capture", 10**6, "movie", "After Capture", ("drama",)),
                Change("delete", gone, 10**6),
            ]
        )
        assert "after-capture" in version.index.revisions() and gone not in version.index.revisions()
        finish()
        index, manifest = load_index(
            tmp_path / "checkpoint", spec=version.bundle.config.index, name="v0001", root=tmp_path
        )
        assert manifest["offset"] == "7-0"
        held = index.revisions()
        assert "after-capture" not in held and gone in held and kept in held
        features = ItemFeatures.load(tmp_path / "checkpoint" / "features.npz")
        assert sorted(features.known(["after-capture", gone, kept])) == sorted([gone, kept])
        np.testing.assert_array_equal(features.get([kept]), version.features.get([kept]))
        lexical = LexicalIndex.restore(tmp_path / "checkpoint" / "lexical", tmp_path / "lexical-copy")
        assert lexical.holds(gone) and not lexical.holds("after-capture")
        assert version.sources.lexical.holds("after-capture")  # the live index went on
