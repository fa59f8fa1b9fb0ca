"""The first hour of a new user (issue 9.6-9.8): `make test` gets its system packages itself or says which
are missing, the README check runs every block in order, and `monorec demo --retrain` needs a demo first."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from monorec.cli import main

REPO = Path(__file__).resolve().parents[1]


def _fake_bin(tmp_path: Path, uid: int) -> Path:
    """A PATH holding only an `id` that reports ``uid``: no redis-server, chromium, sudo or apt-get."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (bin_dir / "id").chmod(0o755)
    return bin_dir


def test_system_deps_names_what_is_missing_when_it_cannot_install(tmp_path: Path) -> None:
    env = {"PATH": str(_fake_bin(tmp_path, uid=1000)), "HOME": str(tmp_path)}
    result = subprocess.run(
        ["/bin/bash", str(REPO / "scripts" / "system-deps.sh")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "redis-server" in result.stderr and "chromium" in result.stderr and "apt-get install" in result.stderr


def test_system_deps_is_silent_when_everything_is_there() -> None:
    if not (shutil.which("redis-server") and shutil.which("chromium")):  # never under make test
        pytest.skip("redis-server or chromium missing: this test would install them")
    result = subprocess.run(["bash", str(REPO / "scripts" / "system-deps.sh")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""  # make test has installed them by now


def _readme_check():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("readme_check", REPO / "scripts" / "readme_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_check_runs_every_block_in_order() -> None:
    check = _readme_check()
    fence = "```"
    readme = (
        f"intro\n{fence}bash\nmake demo\nmake test\n{fence}\ntext\n{fence}python\nprint(1)\n{fence}\n"
        f"{fence}toml\nx=1\n{fence}\n{fence}bash\necho b\n{fence}\n"
    )
    script = check.script(readme)
    assert [language for _, language, _ in check.blocks(readme)] == ["bash", "python", "bash"]
    demo, python, echo = script.index("make -o .venv/.installed demo"), script.index("print(1)"), script.index("echo b")
    assert demo < python < echo and "make test" not in script  # make test runs the check: never itself
    assert script.startswith("set -euo pipefail")
    real = check.blocks((REPO / "README.md").read_text(encoding="utf-8"))
    assert sum(1 for _, language, _ in real if language == "bash") >= 4
    assert "source .venv/bin/activate" in real[1][2]  # how the CLI is reached comes right after the quick start


def test_the_readme_exports_the_token_before_the_server_starts() -> None:
    """Regression (issue 9.9): the token came after `make serve`, which also blocked the shell."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.index("export MONOREC_ADMIN_TOKEN") < text.index("monorec serve >")
    assert "monorec serve > serve.log 2>&1 &" in text


def test_retrain_needs_a_demo_first(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["demo", "--retrain", "--workdir", str(tmp_path / "nothing")]) == 1
    assert "make demo" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


def test_make_test_turns_skips_into_failures() -> None:
    assert os.environ.get("MONOREC_NO_SKIPS") in (None, "1")
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile[makefile.index("\ntest:") :].split("\n\n")[0]
    assert "system-deps" in recipe and "MONOREC_NO_SKIPS=1" in recipe and "readme-check" in recipe
    assert (REPO / ".ci" / "run").read_text().strip().endswith("make test")
