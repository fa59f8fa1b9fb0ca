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
        json.dumps({"op": "upsert", "entity_id": "cli-1", "revision": 1, "entity_type": "movie", "title": "x"})
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
