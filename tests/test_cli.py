"""The CLI end to end on a tiny world: generate -> prepare -> train -> evaluate -> publish."""

import json
import shutil
import subprocess
import sys
import tomllib

import polars as pl
import pytest

from monorec.cli import main
from monorec.pipeline import default_config
from toml_writer import to_toml


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
    cfg.write_text(to_toml(raw))
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
    out = capsys.readouterr().out
    assert "published v0001" in out and "not serving yet" in out and "(live)" not in out  # regression, issue 9.8
    # a candidate that is much worse on every canvas is refused by the gate (exit code 1, nothing published)
    worse = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for m in worse["canvases"].values():  # every request loses its hits
        m["recall@10"], m["ndcg@10"] = 0.0, 0.0
        m["per_request"] = {name: [0.0] * len(v) for name, v in m["per_request"].items()}
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    assert (
        run("publish", "--run", str(tmp_path / "run"), "--metrics", str(tmp_path / "worse.json"), "--registry", reg)
        == 1
    )
    assert "release gate refused" in capsys.readouterr().err
    assert not (tmp_path / "registry" / "versions" / "v0002").exists()

    # the loop back to training: newer logs (here the world's last day again, a day later, as an export of
    # the feedback journal would add them) prepared beside the original ones; the live version's metrics
    # were measured on other requests, so publish measures it again on the candidate's (--prepared)
    logs = pl.concat([pl.read_parquet(f) for f in sorted((tmp_path / "world" / "logs").glob("*.parquet"))])
    newer = logs.filter(pl.col("ts") >= logs["ts"].max() - 86_400).with_columns(pl.col("ts") + 86_400)
    (tmp_path / "feedback" / "logs").mkdir(parents=True)
    newer.write_parquet(tmp_path / "feedback" / "logs" / "feedback.parquet")
    shutil.copy(tmp_path / "world" / "catalogue.parquet", tmp_path / "feedback" / "catalogue.parquet")
    prep2, eval2 = str(tmp_path / "prep2"), str(tmp_path / "eval2")
    feedback = ["--logs", str(tmp_path / "feedback"), "--config", str(cfg)]
    assert run("prepare", "--data", str(tmp_path / "world"), *feedback, "--out", prep2) == 0
    manifest = json.loads((tmp_path / "prep2" / "manifest.json").read_text())
    before = json.loads((tmp_path / "prep" / "manifest.json").read_text())

    def latest(prep: str) -> int:  # the newest labelled row's time
        return max(int(pl.read_parquet(f)["ts"].max()) for f in (tmp_path / prep / "labels").glob("*.parquet"))

    assert latest("prep2") == latest("prep") + 86_400 and before["inputs"].get("logs") is None
    assert manifest["inputs"]["logs"] == [str(tmp_path / "feedback")]
    assert run("evaluate", "--run", str(tmp_path / "run"), "--prepared", prep2, "--out", eval2) == 0
    capsys.readouterr()
    publish = ["publish", "--run", str(tmp_path / "run"), "--metrics", f"{eval2}/metrics.json", "--registry", reg]
    assert run(*publish) == 1  # not comparable with v0001's metrics: refused, named
    assert "request" in capsys.readouterr().err
    assert run(*publish, "--prepared", prep2) == 0  # v0001 measured again on the same requests: the gate passes
    assert "published v0002" in capsys.readouterr().out


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


def test_version_and_every_option_documented_with_its_default():
    """Regression (issue 9.11): no --version; options without help, defaults not shown."""
    import argparse

    from monorec.cli import _parser

    version = subprocess.run([sys.executable, "-m", "monorec.cli", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("monorec ")

    def commands(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield name, sub
                    yield from ((f"{name} {n}", s) for n, s in commands(sub))

    for name, sub in commands(_parser()):
        assert sub.formatter_class is argparse.ArgumentDefaultsHelpFormatter, name
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                assert action.help, f"monorec {name}: {action.dest} has no help"
    shown = " ".join(
        subprocess.run(
            [sys.executable, "-m", "monorec.cli", "versions", "--help"], capture_output=True, text=True
        ).stdout.split()
    )
    assert "(default: runs/demo/deployment)" in shown and "(default: runs/demo/registry)" in shown


def test_read_only_commands_create_nothing(tmp_path, capsys, monkeypatch):
    """Regression (issue 9.11): a bare `monorec versions` created an empty runs/registry."""
    monkeypatch.chdir(tmp_path)
    for command in (["versions"], ["stream", "status"]):
        assert run(*command) == 1
        assert "make demo" in capsys.readouterr().err
        assert run(*command, "--root", "elsewhere/dep", "--registry", "elsewhere/reg") == 1
    assert list(tmp_path.iterdir()) == []


def test_torch_threads_follow_the_free_cores_and_the_environment(monkeypatch):
    """Regression (issue 9.14): torch took every core, also the busy ones."""
    from monorec import threads

    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    cores = threads.available_cores()
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    assert threads.torch_threads() == cores and threads.torch_threads(per_worker=cores) == 1
    monkeypatch.setattr(threads, "busy_cores", lambda: float(cores))  # every core taken by something else
    assert threads.torch_threads() == 1
    monkeypatch.setenv(threads.THREADS_ENV, "3")
    assert threads.torch_threads() == 3
    monkeypatch.setenv(threads.THREADS_ENV, "many")
    with pytest.raises(ValueError, match=threads.THREADS_ENV):
        threads.torch_threads()


def test_busy_cores_sees_a_spinning_process():
    from monorec import threads

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert threads.busy_cores(sample_s=0.5) >= 0.6
    finally:
        spinner.kill()
        spinner.wait()
