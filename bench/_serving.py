"""Shared set-up of the serving benchmarks (B5, B6, B9): a registry with two trained versions of the
synthetic model, and synthetic catalogues of any size in the same vocabulary."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import polars as pl

from monorec.config import ProjectConfig, load_config
from monorec.data.prepared import prepare
from monorec.data.tables import validate_catalogue, validate_logs
from monorec.data.world import TOPICS, WorldSpec, generate_world
from monorec.pipeline import default_config
from monorec.registry import Registry
from monorec.train import train

SMALL_WORLD = WorldSpec(n_users=400, n_items=400, n_requests=3000, seed=0)


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
    with their ONNX export when ``export_onnx``; returns the registry and the world's catalogue."""
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
    rates), the --quick sizes applied. Sets torch and faiss to one thread each: request-level parallelism
    (threads) instead of intra-op parallelism, whose pools would only oversubscribe 2 cores with several
    requests in flight."""
    import faiss
    import torch

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--quick", action="store_true", help="5k entities, 2 s per rate (checks the script runs)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    if args.quick:
        return args, 5_000, 2.0, [10, 100]
    return args, args.items, args.seconds, args.rates
