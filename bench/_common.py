"""What every benchmark records beside its figures: git sha, machine, library versions, threads, seed."""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def environment() -> dict[str, Any]:
    import numpy
    import polars
    import torch

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "git_sha": sha,
        "machine": {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "numpy": numpy.__version__, "polars": polars.__version__},
        "cuda": torch.cuda.is_available(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
    }


# captured when a benchmark starts, so that the record names the code that ran, not a later commit
_STARTED = environment()


def write_record(out: str | Path, record: dict[str, Any]) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the GIL's switch interval as the run left it (the serving benchmarks set a server's: bench/_serving.py)
    environment = {**_STARTED, "gil_switch_interval_ms": sys.getswitchinterval() * 1000}
    out.write_text(json.dumps({**record, "environment": environment}, indent=2) + "\n")
    print(f"wrote {out}")


def data_missing(path: str | Path, what: str) -> bool:
    """True (and a message) when a benchmark's data folder is absent: the benchmark then skips cleanly."""
    if Path(path).exists():
        return False
    print(f"skipped: {what} not found at {path}")
    return True


def scratch_dir(prefix: str = "monorec-bench-") -> Path:
    """A new temporary folder, removed when the benchmark's process exits (a benchmark's deployments and
    worlds run to gigabytes; a finished run leaves nothing behind)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
