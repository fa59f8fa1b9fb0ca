"""B3: ``POST /v1/recommend`` latency per canvas, p50 / p99, at concurrency 1 and 16, over 100k entities,
next to a bare FastAPI echo endpoint with the same request and response schema, measured in the same run
with the same uvicorn settings (uvloop + httptools). The load comes from a separate process on loopback
(``bench/_load.py``: closed loop, keep-alive connections). Target: p99 <= 20 ms on 2 cores; ours minus echo
is reported. Then the cost of each candidate source of each canvas, in process on the serving version, for
the same seeded requests: the embedding source (context tower + index search) and each offline source
(lexical, co-occurrence, popular) called alone, one request at a time.

    python bench/b3_latency.py --out b3.json [--items 100000 --seconds 10] [--quick]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_record
from _http import bench_deployment, bench_env, echo_app, load, percentiles, served, serving
from _load import request_body
from _serving import RUNTIMES
from monorec.deployment import Deployment

CANVASES = ("home", "related", "search", "browse")
CONCURRENCY = (1, 16)


def measure(port: int, items: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for concurrency in CONCURRENCY:
        for canvas in CANVASES:
            r = load(port, concurrency=concurrency, seconds=seconds, mix=f"{canvas}=1", items=items)
            out[f"{canvas}@{concurrency}"] = {
                **percentiles(r["latencies_ms"][canvas]),
                "rps": r["rps"],
                "statuses": r["statuses"],
                "fallbacks": r["fallbacks"],
            }
    return out


def source_costs(dep: Deployment, items: int, requests: int, runtime: str) -> dict[str, dict[str, dict[str, float]]]:
    """Canvas -> source -> latency percentiles (ms) of that source alone, over ``requests`` requests."""
    version = dep.versions["v0001"]
    depth = bench_env("torch").retrieval_depth
    out: dict[str, dict[str, dict[str, float]]] = {}
    for canvas in CANVASES:
        rng = random.Random(0)
        records = [
            version.schema.normalize(canvas, request_body(canvas, rng, items, "x")["context"], version.titles)
            for _ in range(requests)
        ]
        declared = version.bundle.config.canvas(canvas).sources
        times: dict[str, list[float]] = {source: [] for source in declared}
        for record in records:
            for source, source_depth in declared.items():
                started = time.perf_counter()
                if source == "embedding":
                    _, emb = version.encode_records([record], runtime=runtime)  # type: ignore[arg-type]
                    version.index.search(emb.numpy(), depth)
                else:
                    version.sources.propose(source, canvas, [record], source_depth)
                times[source].append((time.perf_counter() - started) * 1000)
        out[canvas] = {source: percentiles(t) for source, t in times.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=10.0, help="per canvas and concurrency level")
    ap.add_argument("--runtime", choices=RUNTIMES, default="onnx", help="the model path's runtime (model_runtime)")
    ap.add_argument("--workers", type=int, default=0, help="serving replicas (0: the API in this process)")
    ap.add_argument("--quick", action="store_true", help="5k entities, 1 s per cell (checks the script runs)")
    args = ap.parse_args()
    items, seconds = (5_000, 1.0) if args.quick else (args.items, args.seconds)
    with bench_deployment(items) as (dep, root, registry):
        with served(echo_app()) as port:
            echo = measure(port, items, seconds)
        with serving(dep, root, registry, bench_env(args.runtime), args.workers) as port:
            ours = measure(port, items, seconds)
        costs = source_costs(dep, items, 200 if args.quick else 1000, args.runtime)
    rows = {
        cell: {
            "ours_p50_ms": ours[cell]["p50"],
            "ours_p99_ms": ours[cell]["p99"],
            "echo_p50_ms": echo[cell]["p50"],
            "echo_p99_ms": echo[cell]["p99"],
            "p99_minus_echo_ms": ours[cell]["p99"] - echo[cell]["p99"],
            "ours_rps": ours[cell]["rps"],
            "fallbacks": ours[cell]["fallbacks"],
            "non_200": sum(v for k, v in ours[cell]["statuses"].items() if k != "200"),
        }
        for cell in ours
    }
    worst = max(r["ours_p99_ms"] for r in rows.values())
    for cell, r in rows.items():
        print(
            f"{cell:>12}: ours p50 {r['ours_p50_ms']:6.2f} p99 {r['ours_p99_ms']:6.2f} ms | echo p50 "
            f"{r['echo_p50_ms']:5.2f} p99 {r['echo_p99_ms']:5.2f} ms | {r['ours_rps']:6.0f} req/s"
        )
    for canvas, by_source in costs.items():
        cells = ", ".join(f"{s} p50 {c['p50']:.2f} p99 {c['p99']:.2f} ms" for s, c in by_source.items())
        print(f"{canvas:>8} sources: {cells}")
    write_record(
        args.out,
        {
            "benchmark": "B3",
            "items": items,
            "seconds_per_cell": seconds,
            "environment_knobs": bench_env(args.runtime).to_dict(),
            "workers": args.workers,
            "index": "hnsw",
            "cells": rows,
            "worst_p99_ms": worst,
            "target_p99_ms": 20.0,
            "met": worst <= 20.0,
            "source_costs_ms": costs,
            "raw": {"ours": ours, "echo": echo},
        },
    )


if __name__ == "__main__":
    main()
