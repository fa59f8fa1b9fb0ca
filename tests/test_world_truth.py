"""The synthetic world's latent truth is what its logs are drawn from, and Q1 records pool over worlds."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from monorec.data.world import WorldSpec, generate_world, latent_world

SPEC = WorldSpec(n_users=300, n_items=200, n_requests=1500, seed=3)


def _load_bench(name: str):  # type: ignore[no-untyped-def]
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_latent_world_is_the_generators_truth() -> None:
    catalogue, logs = generate_world(SPEC)
    world, _ = latent_world(SPEC)
    assert world.item_ids.tolist() == catalogue["entity_id"].to_list()
    assert world.titles == catalogue["title"].to_list()

    # on home, clicked impressions are the ones the latent affinity favours
    home = logs.filter((pl.col("canvas") == "home") & pl.col("user_id").str.starts_with("u"))
    users = np.array([int(u[1:]) for u in home["user_id"].to_list()])
    evening = (home["hour"].to_numpy() >= 18).astype(np.float64)
    items = np.array([int(e[1:]) for e in home["entity_id"].to_list()])
    affinity = np.array([world.affinity(users[i : i + 1], evening[i : i + 1])[0, items[i]] for i in range(len(items))])
    clicked = home["clicked"].to_numpy() == 1
    assert affinity[clicked].mean() > affinity[~clicked].mean() + 0.3

    # on browse, the clicked entities are the browsed category's far more often than the shown ones
    browse = logs.filter((pl.col("canvas") == "browse") & pl.col("user_id").str.starts_with("u"))
    topic = np.array([world.topics.index(c) for c in browse["category"].to_list()])
    items = np.array([int(e[1:]) for e in browse["entity_id"].to_list()])
    member = world.in_topic[items, topic]
    clicked = browse["clicked"].to_numpy() == 1
    assert member[clicked].mean() > member[~clicked].mean() + 0.3


def test_q1_records_pool_request_weighted() -> None:
    pool = _load_bench("q1_pool").pool
    first = {"delta": 0.01, "ci95": [-0.01, 0.03], "requests": 100}  # se 0.02 / 1.96
    second = {"delta": -0.01, "ci95": [-0.02, 0.0], "requests": 300}  # se 0.01 / 1.96
    pooled = pool([first, second])
    assert pooled["delta"] == pytest.approx((100 * 0.01 - 300 * 0.01) / 400)
    half = math.sqrt((100 * 0.02) ** 2 + (300 * 0.01) ** 2) / 400
    assert pooled["ci95"] == pytest.approx([-0.005 - half, -0.005 + half])
    assert pooled["verdict"] == "not significant"
    assert pooled["requests"] == 400
    assert pooled["per_record"] == [0.01, -0.01]
    narrow = pool([{"delta": -0.01, "ci95": [-0.015, -0.005], "requests": 200}] * 2)
    assert narrow["verdict"] == "worse" and narrow["delta"] == pytest.approx(-0.01)
