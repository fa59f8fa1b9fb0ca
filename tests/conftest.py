"""Shared fixtures: a tiny seeded synthetic world, its config and prepared data."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from monorec.config import ProjectConfig, load_config
from monorec.data.prepared import PreparedData, prepare
from monorec.data.tables import validate_catalogue, validate_logs
from monorec.data.world import WorldSpec, generate_world
from monorec.pipeline import default_config

TINY = WorldSpec(n_users=60, n_items=80, n_requests=600, impressions=8, n_bots=1, seed=3)
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_config() -> ProjectConfig:
    cfg = load_config(default_config("synthetic"))
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(
            cfg.model,
            embedding_dim=8,
            retrieval_dim=16,
            tower_hidden=(16,),
            expert_hidden=(16,),
            canvas_tower_hidden=(8,),
            text_buckets=1024,
        ),
        train=dataclasses.replace(cfg.train, epochs=2, batch_size=128, val_requests=30, random_negatives=32),
        evaluate=dataclasses.replace(cfg.evaluate, max_requests=50, retrieval_depth=20),
    )


@pytest.fixture(scope="session")
def config() -> ProjectConfig:
    return tiny_config()


@pytest.fixture(scope="session")
def world(config: ProjectConfig):
    catalogue, logs = generate_world(TINY)
    return validate_catalogue(catalogue, config), validate_logs(logs, config)


@pytest.fixture(scope="session")
def prepared(config: ProjectConfig, world) -> PreparedData:
    catalogue, logs = world
    return prepare(config, catalogue, logs)


@pytest.fixture(scope="session")
def trained(config: ProjectConfig, prepared: PreparedData):
    from monorec.train import train

    return train(config, prepared, progress=False)


@pytest.fixture(scope="session")
def trained_with_source_inputs(config: ProjectConfig, prepared: PreparedData):
    """The tiny model with a ranker that reads every offline source's score (``model.source_inputs``)."""
    from monorec.train import train

    model = dataclasses.replace(config.model, source_inputs=("lexical", "cooccurrence", "popular"))
    return train(dataclasses.replace(config, model=model), prepared, progress=False)


@pytest.fixture(scope="session")
def two_versions(tmp_path_factory: pytest.TempPathFactory, config: ProjectConfig, prepared: PreparedData):
    """A registry with two published versions of the tiny model (different seeds, so different towers)."""
    from monorec.registry import Registry
    from monorec.train import train

    registry = Registry(tmp_path_factory.mktemp("registry"))
    for seed in (0, 1):
        cfg = dataclasses.replace(
            config,
            train=dataclasses.replace(config.train, seed=seed),
            deploy=dataclasses.replace(config.deploy, batch_size=16, checkpoint_batches=2, loader_checkpoint_s=0.05),
        )
        bundle = train(cfg, prepared, progress=False)
        registry.publish(bundle, {"canvases": {}}, force=True)
    return registry


@pytest.fixture(scope="session")
def qdrant_versions(tmp_path_factory: pytest.TempPathFactory, two_versions):  # type: ignore[no-untyped-def]
    """``two_versions`` configured for Qdrant: a collection per version (qdrant-client's local mode) holding
    the dense vectors and the lexical index's sparse ones."""
    from monorec.config import IndexSpec
    from monorec.registry import Registry

    registry = Registry(tmp_path_factory.mktemp("qdrant-registry"))
    for name in ("v0001", "v0002"):
        bundle = two_versions.load(name)
        index = IndexSpec(kind="qdrant", lexical="qdrant")
        bundle = dataclasses.replace(bundle, config=dataclasses.replace(bundle.config, index=index))
        registry.publish(bundle, {"canvases": {}}, force=True)
    return registry


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under ``make test`` (MONOREC_NO_SKIPS=1) a skipped test is a failure: everything a test needs is
    installed by then, so a skip would only hide a broken set-up."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("MONOREC_NO_SKIPS") == "1" and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped under make test (MONOREC_NO_SKIPS=1): {reason}"
