"""Runs the README's blocks in order in one shell, as a new user pasting them would, after `make demo`.

The quick start block (``make demo`` / ``make test``) becomes ``make demo`` alone (``make test`` runs this
check). Bash blocks run verbatim; Python blocks run through the ``python`` the blocks put on the PATH.
Everything happens in a scratch folder that links the repository's .venv, Makefile, sources and configs,
so a developer's own ``runs/`` is never touched. ``curl`` fails on an HTTP error, so an API call that the
README shows succeeding must succeed. Exit status: 0 when every block ran, else the failing block's.

    python scripts/readme_check.py [--readme README.md] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINKED = [".venv", "Makefile", "pyproject.toml", "constraints.txt", "src", "scripts"]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
PRELUDE = """set -euo pipefail
# an HTTP error fails the check (unless the block asks for curl's own -f, e.g. to poll until ready)
curl() {
    local arg
    for arg in "$@"; do
        case "$arg" in --fail | --fail-with-body | -[!-]*f*) command curl "$@"; return;; esac
    done
    command curl --fail-with-body --show-error "$@"
}
"""


def blocks(readme: str) -> list[tuple[int, str, str]]:
    """(line number, language, body) of every bash and python block, in order."""
    out = []
    for match in FENCE.finditer(readme):
        language, body = match.group(1), match.group(2)
        if language in ("bash", "python"):
            out.append((readme.count("\n", 0, match.start()) + 1, language, body))
    return out


def script(readme: str) -> str:
    parts = [PRELUDE]
    for line, language, body in blocks(readme):
        if "make test" in body and "make demo" in body:  # the quick start: the demo (make test runs us);
            body = "make -o .venv/.installed demo\n"  # the venv is the repository's: never reinstalled from here
        parts.append(f'echo "===== README.md line {line} ({language}) ====="')
        if language == "python":
            parts.append(f"python - <<'README_PYTHON'\n{body}README_PYTHON")
        else:
            parts.append(body)
    parts.append('echo "===== every README block ran ====="')
    return "\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--readme", default=str(REPO / "README.md"), help="the README to check")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is printed)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for all blocks together")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="monorec-readme-"))
    for name in LINKED:
        (scratch / name).symlink_to(REPO / name)
    (scratch / "readme.sh").write_text(script(Path(args.readme).read_text(encoding="utf-8")))
    print(f"running the README's blocks in {scratch}", flush=True)
    # its own process group: whatever a block left running (a server in the background) is stopped with it
    shell = subprocess.Popen(["bash", "readme.sh"], cwd=scratch, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        returncode = shell.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"the README's blocks did not finish within {args.timeout:.0f}s", file=sys.stderr)
        returncode = 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    if returncode != 0:
        print("a README block failed: see the last ===== marker above", file=sys.stderr)
    return returncode


if __name__ == "__main__":
    sys.exit(main())
