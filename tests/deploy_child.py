"""Run by test_crash_recovery in a separate process: deploys a version (resuming whatever state the
folder is in); MONOREC_KILL_AT makes it SIGKILL itself at a named point. An optional 4th argument is a
Redis URL: the change log is then a Redis stream."""

from __future__ import annotations

import sys

from monorec.deployment import Deployment, open_log


def main(root: str, registry: str, version: str, redis_url: str | None = None) -> None:
    with Deployment(root, registry, log=open_log(root, redis_url)) as dep:
        dep.open()
        dep.deploy(version)
        print("deployed", version, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
