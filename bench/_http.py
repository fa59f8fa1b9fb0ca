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
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import uvicorn
from fastapi import FastAPI

from _common import scratch_dir
from _serving import as_a_server, bench_config, synthetic_catalogue, two_version_registry
from monorec.deployment import Deployment
from monorec.environments import EnvironmentSpec
from monorec.serving.app import ServeSettings, create_app
from monorec.serving.messages import RecommendRequest, RecommendResponse

LOAD = Path(__file__).resolve().parent / "_load.py"

# the environment measured: 2 worker threads, concurrent requests batched (up to 8, no waiting), a
# budget far above the latencies so that fallbacks do not hide slowness (the record counts them anyway)
BENCH_ENV = EnvironmentSpec("bench", latency_budget_ms=2000.0, worker_threads=2, max_batch=8, max_wait_ms=0.0)


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
    as_a_server()
    tmp = scratch_dir()
    registry, _ = two_version_registry(tmp / "registry", bench_config(index="hnsw"), export_onnx=True)
    with Deployment(tmp / "dep", registry) as dep:
        dep.seed_catalogue(synthetic_catalogue(n_items))
        faiss.omp_set_num_threads(2)  # the HNSW build on every core (a 1M graph on one takes ~10 min)
        dep.deploy("v0001")
        faiss.omp_set_num_threads(1)  # then one per request, as for torch
        yield dep, tmp / "dep", registry.root


def monorec_app(dep: Deployment, root: Path, registry: Path, env: EnvironmentSpec = BENCH_ENV) -> FastAPI:
    return create_app(ServeSettings(root=root, registry=registry, environment=env), deployment=dep)


def _environment_toml(env: EnvironmentSpec) -> str:
    """``env`` as an ``[environments.NAME]`` table: the scalar knobs that differ from the defaults."""
    default = EnvironmentSpec(env.name).to_dict()
    lines = [f"[environments.{env.name}]"]
    for key, value in env.to_dict().items():
        if value == default.get(key) or not isinstance(value, bool | int | float | str):
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@contextmanager
def served_replicas(dep: Deployment, root: Path, registry: Path, env: EnvironmentSpec, workers: int) -> Iterator[int]:
    """``monorec serve --workers N`` around an open deployment: this process is the owner (its app on a
    private port), ``workers`` replica processes share the port yielded (started by the same supervisor as
    the CLI's, see :mod:`monorec.serving.workers`); yields once every replica answers /readyz."""
    from monorec.admin_client import TOKEN_ENV
    from monorec.serving.workers import ReplicaSupervisor, replica_command

    config = root / "bench_environment.toml"
    config.write_text(_environment_toml(env))
    port = free_port()
    with served(create_app(ServeSettings(root=root, registry=registry, environment=env), deployment=dep)) as owner:
        argv = ["serve", "--root", str(root), "--registry", str(registry), "--env", env.name, "--config", str(config)]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
        argv += ["--owner-url", f"http://127.0.0.1:{owner}"]
        supervisor = ReplicaSupervisor(workers, replica_command(argv), env={TOKEN_ENV: "bench"})
        supervisor.start()
        try:
            seen: set[str] = set()
            deadline = time.monotonic() + 600
            while seen != set(supervisor.names):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replicas {set(supervisor.names) - seen} did not become ready")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                        seen.add(json.loads(answer.read()).get("replica", ""))
                except OSError:
                    time.sleep(0.5)
            yield port
        finally:
            supervisor.stop()


@contextmanager
def serving(dep: Deployment, root: Path, registry: Path, env: EnvironmentSpec, workers: int) -> Iterator[int]:
    """Our API on a loopback port: in this process (``workers`` 0) or as ``workers`` replicas."""
    if workers:
        with served_replicas(dep, root, registry, env, workers) as port:
            yield port
    else:
        with served(monorec_app(dep, root, registry, env)) as port:
            yield port
