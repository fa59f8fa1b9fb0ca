"""The CLI end to end on a tiny world: generate -> prepare -> train -> evaluate -> publish."""

import json
import subprocess
import sys
import tomllib

import pytest

from monorec.cli import main
from monorec.pipeline import default_config


def run(*args: str) -> int:
    return main(list(args))


@pytest.mark.slow
def test_cli_pipeline_end_to_end(tmp_path, capsys):
    # a tiny config: small model, two epochs
    raw = tomllib.loads(default_config("synthetic").read_text())
    raw["model"].update(
        {"embedding_dim": 8, "retrieval_dim": 16, "tower_hidden": [16], "expert_hidden": [16], "text_buckets": 2048}
    )
    raw["train"].update({"epochs": 2, "val_requests": 20})
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(_to_toml(raw))
    assert run("config", "check", str(cfg)) == 0

    assert run("generate", "--out", str(tmp_path / "world"), "--users", "50", "--items", "60", "--requests", "400") == 0
    assert run("prepare", "--data", str(tmp_path / "world"), "--out", str(tmp_path / "prep"), "--config", str(cfg)) == 0
    assert (tmp_path / "prep" / "manifest.json").exists()
    assert run("train", "--prepared", str(tmp_path / "prep"), "--out", str(tmp_path / "run")) == 0
    assert (
        run("train", "--prepared", str(tmp_path / "prep"), "--out", str(tmp_path / "run-search"), "--canvas", "search")
        == 0
    )
    assert (
        run(
            "evaluate",
            "--run",
            str(tmp_path / "run"),
            "--prepared",
            str(tmp_path / "prep"),
            "--out",
            str(tmp_path / "eval"),
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| home | model |" in out and "| browse | model |" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["canvases"]) == {"home", "related", "search", "browse"}
    assert (tmp_path / "eval" / "report.md").exists() and (tmp_path / "eval" / "canvases.png").exists()
    reg = str(tmp_path / "registry")
    assert (
        run(
            "publish",
            "--run",
            str(tmp_path / "run"),
            "--metrics",
            str(tmp_path / "eval" / "metrics.json"),
            "--registry",
            reg,
        )
        == 0
    )
    assert "published v0001" in capsys.readouterr().out
    # a candidate that is much worse on every canvas is refused by the gate (exit code 1, nothing published)
    worse = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for m in worse["canvases"].values():
        m["recall@10"], m["ndcg@10"] = -1.0, -1.0
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    assert (
        run("publish", "--run", str(tmp_path / "run"), "--metrics", str(tmp_path / "worse.json"), "--registry", reg)
        == 1
    )
    assert "release gate refused" in capsys.readouterr().err
    assert not (tmp_path / "registry" / "versions" / "v0002").exists()


def test_config_check_exit_codes_and_messages(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[project]\nname = "x"\n[catalogue]\nentity_types = ["movie"]\n[model]\nbottom = "nope"\n')
    assert run("config", "check", str(bad)) == 1
    out = capsys.readouterr().out
    assert "model.bottom" in out and "declare at least one canvas" in out and "declare at least one objective" in out


def test_bad_data_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "data" / "logs").mkdir(parents=True)
    (tmp_path / "data" / "catalogue.csv").write_text("entity_id,entity_type,title\na,movie,A\na,movie,B\n")
    (tmp_path / "data" / "logs" / "home.csv").write_text("ts,canvas,entity_id,clicked\n1,home,a,1\n")
    assert run("prepare", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "prep")) == 1
    err = capsys.readouterr().err
    assert "catalogue.csv" in err and "entity_id" in err and "2 rows affected" in err
    assert not (tmp_path / "prep").exists()  # nothing half-written


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "monorec.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "generate", "prepare", "train", "evaluate", "publish", "config"):
        assert command in result.stdout


def _to_toml(raw: dict) -> str:
    """A minimal TOML writer for the config's shapes (tests only)."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = []
    for section in ("project", "catalogue", "labels", "split", "model", "train", "evaluate"):
        if section in raw:
            lines.append(f"[{section}]")
            lines += [f"{k} = {value(v)}" for k, v in raw[section].items()]
    for f in raw["context"]["fields"]:
        lines.append("[[context.fields]]")
        lines += [f"{k} = {value(v)}" for k, v in f.items()]
    for group in ("objectives", "canvases"):
        for name, body in raw[group].items():
            lines.append(f"[{group}.{name}]")
            lines += [f"{k} = {value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"
