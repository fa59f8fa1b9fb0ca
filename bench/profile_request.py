"""Where a request's time goes, stage by stage (issue 13's profile): the B3 deployment (100k entities, HNSW,
every source each canvas declares), one request at a time through ``ServingEngine.recommend`` (no HTTP),
and the engine's own stage clock (:mod:`monorec.stage_times`, the same figures ``/metrics`` exports):

    validate        recent history from the users table, schema normalisation, checks, the cache key
    stored_users    stored user encodings (environments with ``user_embeddings``)
    featurize       the unified record -> the context tower's input tensors
    context_tower   the context tower's forward (history encoder included)
    retrieve        the vector index search (or the explicit candidates' look-up)
    sources         the other candidate sources (lexical, co-occurrence, popular) and the union
    gather          the candidates' stored item features and embeddings, the ranker's input tensors
    ranker          the ranker's forward and the canvas blend
    finish          argsort, rules, the kept entities' predictions and descriptions
    answer          the response model, its JSON for the caches
    other           the rest of the wall time: the worker hand-off, pinning, futures, the request id

Each canvas is measured with the model path in PyTorch eager and through the version's ONNX export
(``model_runtime = "onnx"``), on the same requests. With ``--ops``, the heaviest torch operators of the
context tower and the ranker (torch.profiler, self CPU time), to show what a compiled runtime could save.

    python bench/profile_request.py --out runs/bench/profile.json [--requests 400] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_record
from _http import bench_deployment
from _load import request_body
from monorec.environments import EnvironmentSpec
from monorec.serving.engine import ServingEngine
from monorec.serving.messages import RecommendRequest

CANVASES = ("home", "related", "search", "browse")


def profile_canvas(engine: ServingEngine, requests: list[RecommendRequest]) -> dict[str, Any]:
    """Mean ms per request of each stage over ``requests`` (after a warm-up), plus p50 / p99 of the total."""
    for r in requests[:20]:
        engine.recommend(r)
    before = engine.model.stages.snapshot()
    walls = []
    for r in requests:
        t0 = time.perf_counter()
        engine.recommend(r)
        walls.append((time.perf_counter() - t0) * 1000)
    after = engine.model.stages.snapshot()
    n = len(requests)
    stages = {
        name: round((seconds - before.get(name, (0, 0.0))[1]) * 1000 / n, 4) for name, (_, seconds) in after.items()
    }
    stages = {k: v for k, v in stages.items() if v > 0}
    mean = statistics.fmean(walls)
    stages["other"] = round(mean - sum(stages.values()), 4)
    walls.sort()
    return {
        "ms_per_request": stages,
        "total_mean_ms": round(mean, 4),
        "total_p50_ms": round(walls[n // 2], 4),
        "total_p99_ms": round(walls[min(n - 1, int(n * 0.99))], 4),
    }


def torch_ops(engine: ServingEngine, requests: list[RecommendRequest], top: int = 12) -> list[dict[str, Any]]:
    """The torch operators with the most self CPU time over ``requests``. The model path runs on this thread
    (the profiler records the thread that started it, not the engine's workers), one request at a time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for r in requests:
            with engine.deployment.router.pin() as version:
                work = engine.model.validate(engine.model.with_recent_history(r, version), version)
                engine.model.rank(version, [work])
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    n = len(requests)
    return [
        {
            "op": e.key,
            "calls_per_request": round(e.count / n, 2),
            "self_ms_per_request": round(e.self_cpu_time_total / 1000 / n, 4),
        }
        for e in events
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=400, help="timed requests per canvas")
    ap.add_argument("--ops", action="store_true", help="also the heaviest torch operators (torch.profiler)")
    ap.add_argument("--quick", action="store_true", help="5k entities, 40 requests per canvas")
    args = ap.parse_args()
    items, n = (5_000, 40) if args.quick else (args.items, args.requests)
    rng = random.Random(0)
    record: dict[str, Any] = {"benchmark": "profile_request", "quick": args.quick, "items": items, "requests": n}
    requests = {c: [RecommendRequest(**request_body(c, rng, items, "x")) for _ in range(n)] for c in CANVASES}
    with bench_deployment(items) as (dep, _, _):
        for runtime in ("torch", "onnx"):  # the same requests through either runtime of the model path
            env = EnvironmentSpec("profile", latency_budget_ms=10_000.0, worker_threads=1, max_batch=1, max_wait_ms=0.0)
            env = dataclasses.replace(env, model_runtime=runtime)  # type: ignore[arg-type]
            engine = ServingEngine(dep, env)
            try:
                canvases = {}
                for canvas in CANVASES:
                    canvases[canvas] = profile_canvas(engine, requests[canvas])
                    if args.ops and runtime == "torch":
                        canvases[canvas]["torch_ops"] = torch_ops(engine, requests[canvas][: max(10, n // 4)])
                    row = canvases[canvas]
                    print(
                        f"{runtime:5s} {canvas:8s} total {row['total_mean_ms']:.2f} ms  "
                        + "  ".join(f"{k} {v:.2f}" for k, v in row["ms_per_request"].items())
                    )
                record[runtime] = canvases
            finally:
                engine.close()
        record["torch_threads"] = torch.get_num_threads()
    write_record(args.out, record)


if __name__ == "__main__":
    main()
