"""Streamed changes in larger batches: a version's lexical commits paced in time
(:class:`~monorec.retrieval.paced_commit.PacedCommit`) and a loader that lingers after a partial batch
(``Loader(linger_s=...)``, ``deploy.loader_linger_s``). Both trade a bounded delay (tens of ms) for fixed
costs paid less often; neither may lose a write or delay a change that arrives after a quiet spell."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from monorec.retrieval.paced_commit import PacedCommit
from monorec.stream.changes import Change
from monorec.stream.loader import Loader
from monorec.stream.log import SqliteChangeLog
from waiting import wait_for


class Commits:
    def __init__(self, fail: int = 0) -> None:
        self.times: list[float] = []
        self.fail = fail

    def __call__(self) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError("disk full for a moment")
        self.times.append(time.monotonic())


def test_without_an_interval_every_write_commits_at_once() -> None:
    commits = Commits()
    paced = PacedCommit(commits, 0.0)
    for _ in range(3):
        paced.written()
    assert len(commits.times) == 3 and not paced.pending


def test_writes_within_the_interval_share_one_commit_at_its_end() -> None:
    commits = Commits()
    paced = PacedCommit(commits, 0.3)
    first = time.monotonic()
    paced.written()  # after a quiet spell: at once
    assert len(commits.times) == 1 and commits.times[0] - first < 0.1
    for _ in range(5):  # right behind it: one commit, due at the interval's end, even with no later write
        paced.written()
    assert len(commits.times) == 1 and paced.pending
    wait_for(lambda: len(commits.times) == 2, timeout=5)
    assert commits.times[1] - commits.times[0] >= 0.25 and not paced.pending
    time.sleep(0.4)
    assert len(commits.times) == 2  # nothing written since: nothing more to commit
    paced.written()  # a quiet spell again: at once
    assert len(commits.times) == 3


def test_close_cancels_the_pending_commit_and_later_writes_commit_nothing() -> None:
    commits = Commits()
    paced = PacedCommit(commits, 0.2)
    paced.written()
    paced.written()
    paced.close()
    paced.written()
    time.sleep(0.4)
    assert len(commits.times) == 1 and not paced.pending


def test_a_commit_that_fails_on_the_timer_is_logged_and_the_next_write_commits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    commits = Commits()
    paced = PacedCommit(commits, 0.2, "v0001-lexical")
    paced.written()
    commits.fail = 1
    with caplog.at_level(logging.ERROR):
        paced.written()
        wait_for(lambda: not paced.pending, timeout=5)
        time.sleep(0.05)
    assert "v0001-lexical: a paced commit failed" in caplog.text and len(commits.times) == 1
    time.sleep(0.25)
    paced.written()
    assert len(commits.times) == 2


def upsert(entity_id: str, revision: int) -> str:
    change = {"op": "upsert", "entity_id": entity_id, "revision": revision, "entity_type": "movie"}
    return json.dumps({**change, "title": "t", "categories": ["drama"]})


class TimedSink:
    def __init__(self) -> None:
        self.batches: list[tuple[float, list[str]]] = []

    def apply(self, changes: Sequence[Change]) -> int:
        self.batches.append((time.monotonic(), [c.entity_id for c in changes]))
        return len(changes)

    def checkpoint(self, offset: str) -> None:
        pass


def test_a_lingering_loader_batches_a_stream_and_reads_a_change_after_a_quiet_spell_at_once(tmp_path: Path) -> None:
    log = SqliteChangeLog(tmp_path / "changes.sqlite")
    log.subscribe("g", "0")
    sink = TimedSink()
    loader = Loader(log, "g", sink, entity_types=["movie"], dead_letter=lambda *a: None, linger_s=0.5)
    loader.start()
    try:
        time.sleep(0.6)  # a quiet spell
        sent = time.monotonic()
        log.append([upsert("a", 1)])
        wait_for(lambda: sink.batches, timeout=5)
        assert sink.batches[0][0] - sent < 0.4  # read at once, not after the linger
        for i in range(5):  # a stream right behind it: waits for the linger, then comes as one batch
            log.append([upsert(f"s{i}", 1)])
            time.sleep(0.02)
        wait_for(lambda: sum(len(ids) for _, ids in sink.batches) == 6, timeout=5)
        assert [ids for _, ids in sink.batches] == [["a"], [f"s{i}" for i in range(5)]]
        assert sink.batches[1][0] - sink.batches[0][0] >= 0.4
    finally:
        loader.stop()
