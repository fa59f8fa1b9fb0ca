"""`monorec serve --workers 2`: an owner and two replica processes sharing one port, end to end; a replica
killed with kill -9 under load while the others keep answering, restarted, caught up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from live_server import free_port
from monorec.deployment import Deployment
from monorec.registry import Registry
from monorec.serving.owner_proxy import OwnerTrials
from waiting import wait_for

TOKEN = "workers-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def replica_pids() -> dict[str, int]:
    """Replica name -> pid of the running `monorec serve --replica NAME` processes (from /proc)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--replica" in argv and b"serve" in argv:
            out[argv[argv.index(b"--replica") + 1].decode()] = int(entry.name)
    return out


def readiness(url: str) -> dict:
    """/readyz through a new connection (the kernel picks the replica), or {} while nothing answers."""
    try:
        answer = httpx.get(f"{url}/readyz", timeout=5)
    except httpx.TransportError:
        return {}
    return answer.json() if answer.status_code == 200 else {}


def seen_replicas(url: str, tries: int = 60) -> set[str]:
    return {r.get("replica", "") for r in (readiness(url) for _ in range(tries))} - {""}


def on_each_replica(url: str, check, names: set[str]) -> None:  # type: ignore[no-untyped-def]
    """``check(client)`` holds on a connection to each named replica."""
    left = set(names)
    deadline = time.monotonic() + 60
    while left:
        assert time.monotonic() < deadline, f"replicas {left} never passed the check"
        with httpx.Client(base_url=url, timeout=10) as client:  # one keep-alive connection: one replica
            name = client.get("/readyz").json().get("replica")
            if name in left and check(client):
                left.discard(name)


@pytest.fixture
def server(tmp_path: Path, two_versions: Registry, prepared) -> Iterator[tuple[str, subprocess.Popen[str]]]:  # type: ignore[no-untyped-def]
    with Deployment(tmp_path / "dep", two_versions) as dep:
        dep.seed_catalogue(prepared.catalogue)
        dep.deploy("v0001")
    port = free_port()
    cmd = [sys.executable, "-m", "monorec", "serve", "--workers", "2", "--port", str(port)]
    cmd += ["--root", str(tmp_path / "dep"), "--registry", str(two_versions.root)]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115  (closed below; replicas write here too)
    env = {**os.environ, "MONOREC_ADMIN_TOKEN": TOKEN}
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is None and seen_replicas(url, 20) == {"r0", "r1"}, timeout=180, poll_s=0.5)
        yield url, process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()
        output = (tmp_path / "server.log").read_text()
        assert "Traceback" not in output, output
        wait_for(lambda: not replica_pids(), timeout=30)  # the owner stopped its replicas


def test_replicas_share_the_port_answer_and_hand_writes_and_admin_to_the_owner(server, prepared) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    home = httpx.post(f"{url}/v1/recommend", json={"canvas": "home", "context": {"user_id": "u1"}})
    assert home.status_code == 200 and home.json()["version"] == "v0001"
    assert httpx.get(f"{url}/v1/admin/versions").status_code == 401  # the owner checks the token
    versions = httpx.get(f"{url}/v1/admin/versions", headers=AUTH).json()
    assert [(d["version"], d["state"]) for d in versions["deployed"]] == [("v0001", "serving")]

    write = {"entity_type": "movie", "title": "Replicated Robot", "categories": ["drama"], "revision": 1}
    assert httpx.put(f"{url}/v1/entities/rep-1", json=write, headers=AUTH).status_code == 202
    on_each_replica(url, lambda c: c.get("/v1/entities/rep-1").json()["versions"] == {"v0001": True}, {"r0", "r1"})

    assert httpx.post(f"{url}/v1/admin/deploy", json={"version": "v0002"}, headers=AUTH).status_code == 202
    body = {"canvas": "home", "context": {"user_id": "u1"}}
    on_each_replica(url, lambda c: c.post("/v1/recommend", json=body).json()["version"] == "v0002", {"r0", "r1"})
    assert httpx.post(f"{url}/v1/admin/rollback", headers=AUTH).json() == {"serving": "v0001"}
    # the rollback returned once both replicas served v0001: new connections (either replica) see only it
    assert {httpx.post(f"{url}/v1/recommend", json=body).json()["version"] for _ in range(20)} == {"v0001"}

    # a canary started on the owner is routed by the replicas too, and a replica hands an abort to the owner
    trial = {"version": "v0002", "mode": "canary", "share": 0.5}
    assert httpx.post(f"{url}/v1/admin/trial", json=trial, headers=AUTH).status_code == 200

    def versions_for_users(client: httpx.Client) -> set[str]:
        bodies = [{"canvas": "home", "context": {"user_id": f"u{i}"}} for i in range(40)]
        return {client.post("/v1/recommend", json=b).json()["version"] for b in bodies}

    on_each_replica(url, lambda c: versions_for_users(c) == {"v0001", "v0002"}, {"r0", "r1"})

    def candidate_answers_seen_by_replicas() -> dict[str, int]:  # the owner's view of each replica's side
        sides = httpx.get(f"{url}/v1/admin/trial", headers=AUTH).json()["replicas"]
        home = {name: side["canvases"].get("home", {}).get("versions", {}) for name, side in sides.items()}
        return {name: versions.get("v0002", {}).get("requests", 0) for name, versions in home.items()}

    # each replica reports its side with its heartbeat (about once a second)
    wait_for(lambda: (seen := candidate_answers_seen_by_replicas()).keys() == {"r0", "r1"} and all(seen.values()))
    OwnerTrials(url, TOKEN).abort("a replica's guard saw a breach")  # sent to a replica, done by the owner
    status = httpx.get(f"{url}/v1/admin/trial", headers=AUTH).json()
    assert status["trial"] is None and status["last_abort"] == "v0002: a replica's guard saw a breach"
    on_each_replica(url, lambda c: versions_for_users(c) == {"v0001"}, {"r0", "r1"})


def test_a_replica_killed_under_load_comes_back_caught_up_while_the_other_answers(server) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    statuses: Counter[str] = Counter()
    stop = threading.Event()

    def load() -> None:
        body = {"canvas": "related", "context": {"source_item_id": "m00003"}}
        while not stop.is_set():
            with httpx.Client(base_url=url, timeout=10) as client:  # a new connection every 5 requests
                for _ in range(5):
                    try:
                        statuses[str(client.post("/v1/recommend", json=body).status_code)] += 1
                    except httpx.TransportError:
                        statuses["connection lost"] += 1
                        break

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        killed = replica_pids()["r0"]
        os.kill(killed, signal.SIGKILL)
        write = {"entity_type": "movie", "title": "Written While Down", "categories": ["drama"], "revision": 1}
        for attempt in range(3):  # a connection the kernel queued at the killed replica is reset: retried
            try:
                assert httpx.put(f"{url}/v1/entities/while-down", json=write, headers=AUTH).status_code == 202
                break
            except httpx.TransportError:
                assert attempt < 2
        wait_for(lambda: replica_pids().get("r0") not in (None, killed), timeout=60)  # restarted
        wait_for(lambda: "r0" in seen_replicas(url, 10), timeout=180, poll_s=0.5)
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert statuses["200"] > 50
    assert set(statuses) <= {"200", "connection lost"}, statuses  # never a 5xx
    assert statuses["connection lost"] <= 3, statuses  # at most the requests the killed replica held
    on_each_replica(url, lambda c: c.get("/v1/entities/while-down").json()["versions"] == {"v0001": True}, {"r0"})
