"""kill -9 at random points of a deploy under streaming: after a restart the live version answers and the
new version ends with exactly the catalogue (same ids, each at its latest revision) and, in its user store,
exactly the users table (every user's state at its latest revision)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from monorec.deployment import Deployment, open_log
from monorec.deployment.control_plane import ControlPlane
from monorec.registry import Registry
from monorec.stream.log import ChangeLog
from monorec.users import user_key
from monorec.users.seed import user_states
from redis_server import RedisServer

CHILD = Path(__file__).with_name("deploy_child.py")
# checkpoint_swap: between the two renames of an index checkpoint (the old one aside, the new one not in)
POINTS = ["subscribed", "bulk_batch", "validating", "switching", "switched", "checkpoint_swap"]


def run_child(
    root: Path, registry: Registry, kill_at: str | None, kill_after_s: float | None = None, redis_url: str = ""
) -> subprocess.CompletedProcess[str]:
    """Runs the deploy in a child process; it SIGKILLs itself at ``kill_at``, or is killed by us after
    ``kill_after_s`` (a random point in time, unless it finished first)."""
    env = {**os.environ, "MONOREC_KILL_AT": kill_at or ""}
    args = [sys.executable, str(CHILD), str(root), str(registry.root), "v0002", *([redis_url] if redis_url else [])]
    with subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        try:
            out, err = child.communicate(timeout=kill_after_s if kill_after_s is not None else 300)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            out, err = child.communicate()
        return subprocess.CompletedProcess(args, child.returncode, out, err)


class Publisher:
    """Another process's view of the log: streams upserts, deletes and user states while the deploy runs."""

    def __init__(self, log: ChangeLog, seed: int, interval_s: float = 0.003) -> None:
        self.log, self.interval_s = log, interval_s
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.count = 0
        self.titled: dict[int, str] = {}  # revision -> the entity an upsert at it titled "title rREVISION"
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        revision = 1000
        while not self.stop.is_set():
            revision += 1
            n = self.rng.randrange(120)  # the catalogue has 80 entities: existing and new ids
            entity = f"m{n:05d}" if n % 2 else f"new{n}"
            draw = self.rng.random()
            if draw < 0.25:  # a user's new state: known users and new ones
                user = f"u{self.rng.randrange(60)}"
                country = self.rng.choice(["US", "DE", "FR"])
                change = {"op": "user", "user_id": user, "revision": revision, "profile": {"country": country}}
                change["history"] = [entity]
            elif draw < 0.45:
                change = {"op": "delete", "entity_id": entity, "revision": revision}
            else:
                change = {
                    "op": "upsert",
                    "entity_id": entity,
                    "revision": revision,
                    "entity_type": "movie",
                    "title": f"title r{revision}",
                    "categories": ["drama"],
                }
                self.titled[revision] = entity
            self.log.append([json.dumps(change)])
            self.count += 1
            time.sleep(self.interval_s)

    def __enter__(self) -> Publisher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


# the SQLite log with faiss and tantivy (seeds 0-7), a Redis stream, and Qdrant for dense and lexical
CASES = [("sqlite", seed) for seed in range(8)] + [("redis", 1), ("redis", 6), ("qdrant", 1), ("qdrant", 7)]


@pytest.mark.slow
@pytest.mark.parametrize(("log_kind", "seed"), CASES)
def test_kill_9_during_a_streaming_deploy_loses_nothing(
    log_kind: str,
    seed: int,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    prepared,  # type: ignore[no-untyped-def]
) -> None:
    """Seeds 0-5 die at each named point in turn (deterministic); seeds 6-7 are killed by the test at a
    seeded random moment of the deploy. The embedded SQLite log, a real redis-server's stream, and Qdrant
    collections (local mode) for the vector and lexical indexes."""
    registry = request.getfixturevalue("qdrant_versions" if log_kind == "qdrant" else "two_versions")
    rng = random.Random(seed)
    kill_at, kill_after_s = None, None
    if seed < len(POINTS):
        point = POINTS[seed]
        kill_at = f"{point}:{rng.randint(1, 4) if point in ('bulk_batch', 'checkpoint_swap') else 1}"
    else:
        kill_after_s = rng.uniform(0.5, 2.5)
    server = RedisServer(tmp_path / "redis").start() if log_kind == "redis" else None
    try:
        run_case(tmp_path, registry, prepared, seed, kill_at, kill_after_s, server.url if server else "")
    finally:
        if server is not None:
            server.stop()


def run_case(  # type: ignore[no-untyped-def]
    tmp_path: Path, two_versions: Registry, prepared, seed: int, kill_at, kill_after_s, redis_url: str
) -> None:
    root = tmp_path / "dep"
    with Deployment(root, two_versions, log=open_log(root, redis_url or None)) as dep:
        dep.seed_catalogue(prepared.catalogue)
        dep.seed_users(user_states(prepared.rows("train"), two_versions.config("v0001")))
        assert dep.catalogue.user_count() > 20
        dep.deploy("v0001")

    # qdrant-client's local mode (Python, persisting every write) applies changes far slower than faiss: a
    # publisher as fast as the other cases' outruns the loaders for good (the restart never catches up)
    interval_s = 0.03 if two_versions.config("v0001").index.kind == "qdrant" else 0.003
    with Publisher(open_log(root, redis_url or None), seed, interval_s) as publisher:
        killed = run_child(root, two_versions, kill_at, kill_after_s, redis_url)
        if kill_at is not None:
            assert killed.returncode == -9, f"expected a SIGKILL at {kill_at}: {killed.stderr[-2000:]}"
        else:  # killed at a random moment, or it finished first
            assert killed.returncode in (-9, 0), killed.stderr[-2000:]
        control = ControlPlane(root / "control.sqlite")
        if kill_at is not None and kill_at.split(":")[0] in (
            "subscribed",
            "bulk_batch",
            "validating",
            "checkpoint_swap",
        ):
            # killed before validation passed: the half-built version is not ready and nothing switched
            # (a checkpoint swap may also be v0001's, while the child opens it, before v0002 exists)
            v0002 = control.get("v0002")
            assert v0002 is None or v0002.state == "staging"
            assert control.pointer("serving") == "v0001"

        with Deployment(root, two_versions, log=open_log(root, redis_url or None)) as dep:  # after the crash
            dep.open()
            with dep.router.pin() as version:
                answer = version.recommend("home", {"user_id": "u2"}, k=5)
            assert answer.version in ("v0001", "v0002") and len(answer.ids) == 5

        finished = run_child(root, two_versions, None, redis_url=redis_url)  # the restart resumes the deploy
        assert finished.returncode == 0, finished.stderr[-3000:]
        assert "deployed v0002" in finished.stdout
    assert publisher.count > 20

    with Deployment(root, two_versions, log=open_log(root, redis_url or None)) as dep:
        dep.open()
        dep.sync_catalogue()
        expected = dep.catalogue.revisions()
        assert dep.control.pointer("serving") == "v0002"
        for name in ("v0002", "v0001"):  # serving and standby both hold exactly the catalogue
            dep.loaders[name].catch_up()
            assert dep.versions[name].index.revisions() == expected, name
            # the lexical index too: an entity's title is findable exactly while it is its latest one
            lexical = dep.versions[name].sources.lexical
            assert lexical.ids() == expected.keys(), name
            found = lexical.search([f"r{r}" for r in publisher.titled], 1)
            for (revision, entity), hits in zip(publisher.titled.items(), found, strict=True):
                assert [e for e, _ in hits] == ([entity] if expected.get(entity) == revision else []), (name, entity)
        assert len(dep.versions["v0002"].index) == dep.catalogue.count()
        users = dep.catalogue.user_revisions()
        for name in ("v0002", "v0001"):  # and both hold every user's latest state, nothing else
            store = dep.versions[name].users
            assert store is not None
            assert store.revisions() == {user_key("home", u): r for u, r in users.items()}, name
        assert not dep.control.dead_letters()
