"""Joining, or starting, the Ray cluster that the distributed paths run on.

``--ray auto`` uses the cluster that ``RAY_ADDRESS`` names, else starts a local one on this machine (no
dashboard, no usage statistics); ``--ray ADDRESS`` (``host:6379``, ``ray://host:10001``) joins that
cluster. The same code then runs on a laptop's cores or on a cluster's nodes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from monorec.errors import ConfigError

__all__ = ["RAY_INSTALL", "block_rows", "failpoints_env", "import_ray", "ray_session"]

RAY_INSTALL = "pip install 'monorec[ray]'"
_SOURCE = "--ray"


def import_ray() -> ModuleType:
    """The ``ray`` module.

    Raises:
        ConfigError: Ray is not installed (names the extra that brings it).
    """
    try:
        import ray
    except ImportError:
        raise ConfigError(_SOURCE, [f"Ray is not installed: {RAY_INSTALL}"]) from None
    return ray


@contextlib.contextmanager
def ray_session(address: str = "auto", *, cpus: int | None = None) -> Iterator[ModuleType]:
    """Ray, initialised for the block and shut down after it (unless this process had already initialised
    it, e.g. a test's local cluster, which is used as it is and left running).

    Args:
        address: ``auto`` (``RAY_ADDRESS``, else a new local cluster) or a cluster's address.
        cpus: a new local cluster's cores (default: this machine's). It declares one logical CPU more than
            that: a pool of actors that takes every core must leave Ray Data a slot for its file listing
            and reading tasks, which would otherwise wait forever behind the pool.

    Raises:
        ConfigError: Ray is not installed, or the cluster cannot be reached.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, object] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address != "auto":
        kwargs["address"] = address
    elif not os.environ.get("RAY_ADDRESS"):
        kwargs["num_cpus"] = (cpus or os.cpu_count() or 1) + 1
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(_SOURCE, [f"Ray at {address!r} cannot be used: {exc}"]) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def failpoints_env() -> dict[str, Any] | None:
    """The test failpoints of this process (:mod:`monorec._failpoints`), passed on to the actors."""
    names = ("MONOREC_KILL_AT", "MONOREC_KILL_ONCE")
    env = {name: os.environ[name] for name in names if os.environ.get(name)}
    return {"env_vars": env} if env else None


def block_rows(total: int, workers: int, most: int) -> int:
    """Rows per block of a pool's input: at least two blocks per actor where ``total`` allows (so that every
    actor works and a retried block is small), at most ``most``."""
    return max(1, min(most, -(-total // (2 * workers))))
