"""Run by test_crash_recovery in a separate process: deploys a version (resuming whatever state the
folder is in); MONOREC_KILL_AT makes it SIGKILL itself at a named point."""

from __future__ import annotations

import sys

from monorec.deploy import Deployment


def main(root: str, registry: str, version: str) -> None:
    with Deployment(root, registry) as dep:
        dep.open()
        dep.deploy(version)
        print("deployed", version, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
