"""Shared by the serving tests: a deployment of the tiny model with v0001 serving."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from monorec.deployment import Deployment
from monorec.environments import EnvironmentSpec
from monorec.registry import Registry
from monorec.serving.engine import ServingEngine


def deployed(root: Path, registry: Registry, catalogue) -> Deployment:  # type: ignore[no-untyped-def]
    dep = Deployment(root, registry)
    dep.seed_catalogue(catalogue)
    dep.deploy("v0001")
    return dep


@contextmanager
def engine_for(dep: Deployment, **knobs: object) -> Iterator[ServingEngine]:
    engine = ServingEngine(dep, EnvironmentSpec("test", **knobs))  # type: ignore[arg-type]
    try:
        yield engine
    finally:
        engine.close()
