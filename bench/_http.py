"""Shared by the HTTP benchmarks (B3, B8): the deployment they serve, the bare FastAPI echo anchor, servers
in threads with identical uvicorn settings, and the load generator started as a separate process."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI

from _serving import bench_config, synthetic_catalogue, two_version_registry
from monorec.deployment import Deployment
from monorec.environments import EnvironmentSpec
from monorec.serving.app import ServeSettings, create_app
from monorec.serving.messages import RecommendRequest, RecommendResponse

LOAD = Path(__file__).resolve().parent / "_load.py"

# the environment measured: 2 worker threads, concurrent requests batched (up to 8, no waiting), a
# budget far above the latencies so that fallbacks do not hide slowness (the record counts them anyway)
BENCH_ENV = EnvironmentSpec("bench", latency_budget_ms=2000.0, worker_threads=2, max_batch=8, max_wait_ms=0.0)
RUNTIMES = ("torch", "onnx")


def bench_env(runtime: str) -> EnvironmentSpec:
    """:data:`BENCH_ENV` with the model path on ``runtime`` ("torch" or "onnx", see ``model_runtime``)."""
    return dataclasses.replace(BENCH_ENV, model_runtime=runtime)  # type: ignore[arg-type]


def echo_app() -> FastAPI:
    """The anchor: FastAPI with the same request and response schema, answering without any work."""
    app = FastAPI()

    @app.post("/v1/recommend", response_model=RecommendResponse)
    def recommend(body: RecommendRequest) -> RecommendResponse:
        return RecommendResponse(canvas=body.canvas, version="echo", items=[], took_ms=0.0, source="model")

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(app: Any) -> Iterator[int]:
    """``app`` on a loopback port (uvloop + httptools, no access log: the same for ours and the echo)."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), loop="uvloop", http="httptools", access_log=False, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield config.port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def load(port: int, *, concurrency: int, seconds: float, mix: str, items: int, seed: int = 0) -> dict[str, Any]:
    """Runs the load generator in its own process and returns its JSON result."""
    cmd = [sys.executable, str(LOAD), "--port", str(port), "--concurrency", str(concurrency)]
    cmd += ["--seconds", str(seconds), "--mix", mix, "--items", str(items), "--seed", str(seed)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "load.json"
        subprocess.run([*cmd, "--out", str(out)], check=True)
        return json.loads(out.read_text())


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "n": len(a)}


@contextmanager
def bench_deployment(n_items: int) -> Iterator[tuple[Deployment, Path, Path]]:
    """A deployment of the synthetic model (HNSW index, published with its ONNX export) over ``n_items``
    synthetic entities, v0001 serving."""
    torch.set_num_threads(1)  # request-level parallelism: intra-op threads only oversubscribe the 2 cores
    faiss.omp_set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    registry, _ = two_version_registry(tmp / "registry", bench_config(index="hnsw"), export_onnx=True)
    with Deployment(tmp / "dep", registry) as dep:
        dep.seed_catalogue(synthetic_catalogue(n_items))
        dep.deploy("v0001")
        yield dep, tmp / "dep", registry.root


def monorec_app(dep: Deployment, root: Path, registry: Path, env: EnvironmentSpec = BENCH_ENV) -> FastAPI:
    return create_app(ServeSettings(root=root, registry=registry, environment=env), deployment=dep)
