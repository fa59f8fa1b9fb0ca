"""The deployment commands of the CLI, end to end on a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monorec.cli import main
from monorec.registry import Registry


def test_deploy_stream_switch_rollback_retire_from_the_command_line(
    tmp_path: Path,
    two_versions: Registry,
    prepared,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    catalogue = tmp_path / "catalogue.parquet"
    prepared.catalogue.select("entity_id", "entity_type", "title", "categories").write_parquet(catalogue)
    common = ["--root", str(tmp_path / "dep"), "--registry", str(two_versions.root)]

    assert main(["deploy", "v0001", "--catalogue", str(catalogue), *common]) == 0
    assert "v0001 is serving" in capsys.readouterr().out

    changes = tmp_path / "changes.jsonl"
    changes.write_text(
        json.dumps(
            {
                "op": "upsert",
                "entity_id": "cli-1",
                "revision": 1,
                "entity_type": "movie",
                "title": "x",
                "categories": [],
            }
        )
        + "\n"
        + json.dumps({"op": "delete", "entity_id": "m00001", "revision": 5})
        + "\n"
    )
    assert main(["stream", "publish", str(changes), *common]) == 0
    assert "published 2 change(s)" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"op": "upsert", "entity_id": "z", "revision": 1, "entity_type": "ufo"}\n')
    assert main(["stream", "publish", str(bad), *common]) == 1
    assert "entity_type" in capsys.readouterr().err
    poison = tmp_path / "poison.jsonl"  # regression (issue 9.1): accepted, then every deploy crashed in polars
    lines = [{"op": "delete", "entity_id": "ok", "revision": 1}, {"op": "delete", "entity_id": "p", "revision": 10**30}]
    poison.write_text("".join(json.dumps(line) + "\n" for line in lines))
    from monorec.stream.log import SqliteChangeLog

    head = SqliteChangeLog(tmp_path / "dep" / "changes.sqlite").head()
    assert main(["stream", "publish", str(poison), *common]) == 1
    assert SqliteChangeLog(tmp_path / "dep" / "changes.sqlite").head() == head
    assert "line 2" in (err := capsys.readouterr().err) and "revision" in err  # nothing of the file published

    assert main(["deploy", "v0002", *common]) == 0
    assert main(["versions", *common]) == 0
    out = capsys.readouterr().out
    assert "v0002 is serving" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("v000")}
    entities = prepared.catalogue.height  # +1 upsert, -1 delete
    assert lines["v0001"][1] == "standby" and lines["v0002"][1:3] == ["serving", str(entities)]

    assert main(["rollback", *common]) == 0
    assert "v0001 is serving" in capsys.readouterr().out
    assert main(["retire", "v0001", *common]) == 1  # serving: refused with a reason
    assert "serving" in capsys.readouterr().err
    assert main(["switch", "v0002", *common]) == 0
    assert main(["retire", "v0001", *common]) == 0
    assert main(["stream", "status", *common]) == 0
    out = capsys.readouterr().out
    assert "group index-v0002" in out and "index-v0001" not in out and "dead letters: 0" in out


def test_monorec_serve_runs_the_api_for_a_named_environment(
    tmp_path: Path,
    two_versions: Registry,
    prepared,  # type: ignore[no-untyped-def]
) -> None:
    """`monorec serve --env NAME` in its own process: ready, answers, refuses the canvases the environment
    does not serve, takes its admin token from MONOREC_ADMIN_TOKEN, stops cleanly on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from live_server import free_port
    from monorec.deployment import Deployment

    with Deployment(tmp_path / "dep", two_versions) as dep:
        dep.seed_catalogue(prepared.catalogue)
        dep.deploy("v0001")
    config = tmp_path / "serving.toml"  # an operator's file of environments only
    config.write_text('[environments.edge]\ncanvases = ["home", "search"]\nlatency_budget_ms = 500\n')
    port = free_port()
    env = {**os.environ, "MONOREC_ADMIN_TOKEN": "cli-token"}
    cmd = [sys.executable, "-m", "monorec.cli", "serve", "--env", "edge", "--config", str(config)]
    cmd += ["--root", str(tmp_path / "dep"), "--registry", str(two_versions.root), "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        home = httpx.post(f"{url}/v1/recommend", json={"canvas": "home", "context": {"user_id": "u1"}})
        assert home.status_code == 200 and home.json()["version"] == "v0001"
        assert httpx.post(f"{url}/v1/recommend", json={"canvas": "browse"}).status_code == 404
        assert httpx.get(f"{url}/v1/info").json()["environment"] == "edge"
        auth = {"Authorization": "Bearer cli-token"}
        assert httpx.get(f"{url}/v1/admin/versions", headers=auth).status_code == 200
        # regression (issue 9.10): the CLI refused ("owned by another running process"); it asks the server
        cli = [sys.executable, "-m", "monorec.cli"]
        where = ["--root", str(tmp_path / "dep"), "--registry", str(two_versions.root)]

        def monorec(*args: str, token: str | None = "cli-token") -> subprocess.CompletedProcess[str]:
            child_env = {k: v for k, v in os.environ.items() if k != "MONOREC_ADMIN_TOKEN"}
            if token is not None:
                child_env["MONOREC_ADMIN_TOKEN"] = token
            return subprocess.run([*cli, *args, *where], env=child_env, capture_output=True, text=True, timeout=300)

        no_token = monorec("versions", token=None)
        assert no_token.returncode == 1 and "MONOREC_ADMIN_TOKEN" in no_token.stderr
        assert "refused the token" in monorec("versions", token="wrong").stderr
        listed = monorec("versions")
        assert listed.returncode == 0 and "asking the server" in listed.stderr, listed.stderr
        assert any(line.split()[:2] == ["v0001", "serving"] for line in listed.stdout.splitlines())
        deployed = monorec("deploy", "v0002")
        assert deployed.returncode == 0 and "v0002 is serving" in deployed.stdout, deployed.stderr
        assert httpx.post(f"{url}/v1/recommend", json={"canvas": "home"}).json()["version"] == "v0002"
        assert "v0001 is serving" in monorec("rollback").stdout
        retire = monorec("retire", "v0001")
        assert retire.returncode == 1 and "serving" in retire.stderr  # refused by the server, reason shown
        status = monorec("stream", "status")
        assert status.returncode == 0 and "group index-v0002" in status.stdout and "dead letters: 0" in status.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    # uvicorn shuts down gracefully (lifespan exit: loaders stopped, folder released), then re-raises SIGTERM
    assert server.returncode in (0, -signal.SIGTERM) and "Traceback" not in output, output
    assert "admin token" not in output  # the token came from MONOREC_ADMIN_TOKEN, nothing random was printed
    with Deployment(tmp_path / "dep", two_versions):  # the folder's lock was released
        pass
    assert not (tmp_path / "dep" / "server.json").exists()  # and the announcement withdrawn
