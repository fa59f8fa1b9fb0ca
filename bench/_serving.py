"""Shared set-up of the serving benchmarks (B3, B5, B6, B8, B9, B10): a registry with two trained versions of the
synthetic model, and synthetic catalogues of any size in the same vocabulary."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import get_args

import numpy as np
import polars as pl

from monorec.config import ProjectConfig, load_config
from monorec.data.prepared import prepare
from monorec.data.tables import validate_catalogue, validate_logs
from monorec.data.world import TOPICS, WorldSpec, generate_world
from monorec.environments import ModelRuntime
from monorec.pipeline import default_config
from monorec.registry import Registry
from monorec.train import train

RUNTIMES = get_args(ModelRuntime)  # what --runtime may name: the environments' model_runtime values
SMALL_WORLD = WorldSpec(n_users=400, n_items=400, n_requests=3000, seed=0)
REPO = Path(__file__).resolve().parents[1]
# trained registries kept between benchmark runs (`make bench-quick` trains the same fixture for several
# benchmarks): keyed by everything that decides what training produces, the library's sources included
FIXTURE_CACHE = Path(os.environ.get("MONOREC_BENCH_CACHE", REPO / "runs" / "bench-cache"))


def as_a_server() -> None:
    """This process's threads set as ``monorec serve`` sets a server's: torch and faiss at one thread per
    request (request-level parallelism: intra-op pools would only oversubscribe 2 cores with several
    requests in flight) and the GIL's switch interval of the default environment."""
    import faiss
    import torch

    from monorec.environments import EnvironmentSpec
    from monorec.threads import set_gil_switch_interval

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    set_gil_switch_interval(EnvironmentSpec("bench").gil_switch_interval_ms)


def bench_config(index: str = "exact", **deploy: object) -> ProjectConfig:
    """The synthetic config, one training epoch; ``index`` kind ("hnsw" for serving 100k+ entities)."""
    cfg = load_config(default_config("synthetic"))
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, epochs=1, val_requests=50),
        index=dataclasses.replace(cfg.index, kind=index),  # type: ignore[arg-type]
        deploy=dataclasses.replace(cfg.deploy, **deploy),  # type: ignore[arg-type]
    )


def two_version_registry(
    root: Path, config: ProjectConfig, seeds: tuple[int, ...] = (0, 1), *, export_onnx: bool = False
) -> tuple[Registry, pl.DataFrame]:
    """Two versions (seeds 0 and 1; or one per given seed) trained for one epoch on a small world, published
    with their ONNX export when ``export_onnx``; returns the registry and the world's catalogue. A copy of
    the same fixture trained before (same config, seeds, world and library sources) is reused: the fixture
    is not what the benchmarks measure, and training is seeded and reproducible."""
    cached = FIXTURE_CACHE / _fixture_key(config, seeds, export_onnx)
    if not (cached / "catalogue.parquet").exists():
        building = cached.with_name(f"{cached.name}.{uuid.uuid4().hex}.tmp")
        building.mkdir(parents=True)
        _, catalogue = _train_registry(building / "registry", config, seeds, export_onnx)
        catalogue.write_parquet(building / "catalogue.parquet")  # last: marks the fixture complete
        try:
            building.rename(cached)
        except OSError:  # another run cached it meanwhile
            shutil.rmtree(building, ignore_errors=True)
    shutil.copytree(cached / "registry", root)
    return Registry(root), pl.read_parquet(cached / "catalogue.parquet")


def _fixture_key(config: ProjectConfig, seeds: tuple[int, ...], export_onnx: bool) -> str:
    import torch

    digest = hashlib.sha256(repr((config, seeds, export_onnx, SMALL_WORLD, torch.__version__)).encode())
    for path in sorted((REPO / "src" / "monorec").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def _train_registry(
    root: Path, config: ProjectConfig, seeds: tuple[int, ...], export_onnx: bool
) -> tuple[Registry, pl.DataFrame]:
    catalogue, logs = generate_world(SMALL_WORLD)
    catalogue, logs = validate_catalogue(catalogue, config), validate_logs(logs, config)
    prepared = prepare(config, catalogue, logs)
    registry = Registry(root)
    for seed in seeds:
        cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
        registry.publish(train(cfg, prepared, progress=False), {"canvases": {}}, force=True, export_onnx=export_onnx)
    return registry, catalogue


def synthetic_catalogue(n: int, seed: int = 0, prefix: str = "x") -> pl.DataFrame:
    """``n`` entities with titles and categories from the synthetic world's topics."""
    rng = np.random.default_rng(seed)
    topics = list(TOPICS)
    main = rng.integers(0, len(topics), n)
    titles = [" ".join(rng.choice(TOPICS[topics[t]], 3, replace=True)).title() for t in main]
    return pl.DataFrame(
        {
            "entity_id": [f"{prefix}{i:07d}" for i in range(n)],
            "entity_type": np.where(rng.random(n) < 0.7, "movie", "series").tolist(),
            "title": titles,
            "categories": [topics[t] for t in main],
        }
    )


def freshness_arguments(description: str | None) -> tuple[argparse.Namespace, int, float, list[int]]:
    """The command line of the freshness benchmarks (B6, B10): returns (args, entities, seconds per rate,
    rates), the --quick sizes applied; ``args.runtime`` runs the towers of the queries measured (the
    versions' ONNX export by default, as B3 and B8 serve them; ``torch``: PyTorch eager). Sets the
    process's threads as a server's (:func:`as_a_server`)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--quick", action="store_true", help="5k entities, 2 s per rate (checks the script runs)")
    ap.add_argument("--runtime", choices=RUNTIMES, default="onnx", help="the towers' runtime (model_runtime)")
    args = ap.parse_args()
    as_a_server()
    if args.quick:
        return args, 5_000, 2.0, [10, 100]
    return args, args.items, args.seconds, args.rates
