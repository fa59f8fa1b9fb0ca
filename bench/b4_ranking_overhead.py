"""B4: ranking 200 candidates through the serving path vs the same model's forward called directly.

The serving path is ``ServingEngine.recommend`` (PyTorch eager; and through the version's ONNX export,
``model_runtime = "onnx"``, as ``serving_onnx``) with 200 explicit candidate ids (no retrieval): validation
and imputation, pinning a version, the worker hand-off, context featurizing and tower, the stored item
features and embeddings of the 200, the ranker, the canvas blend, rules, the top 10 with their predictions
and descriptions. Three anchors, measured in the same run on the same requests:

- ``ranker``: what the model itself must compute for that answer, called directly on ready tensors
  (context tower on one row, ranker on 200 rows, blend) - the target is serving <= 1.3x this;
- ``ranker_onnx``: the same through the version's exported graphs on ready arrays (the context tower on
  one row, the ranker graph on the 200 with the request's context share computed once, the top 10): what
  ``serving_onnx`` costs beyond it is the serving path's own overhead;
- ``forward``: ``MonorecModel.forward`` on 200 ready (context, entity) rows (both towers and the ranker),
  the cost of scoring 200 pairs without the serving path's reuse of stored item embeddings.

    python bench/b4_ranking_overhead.py --out b4.json [--requests 500] [--quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_record
from _http import bench_deployment
from _load import request_body
from monorec.bundle import context_tensors, item_tensors
from monorec.environments import EnvironmentSpec
from monorec.serving.engine import ServingEngine
from monorec.serving.messages import RecommendRequest

CANDIDATES = 200


def timed(fn: Callable[[int], object], n: int) -> float:
    """Median milliseconds of ``fn(i)`` over ``n`` calls (after 20 warm-up calls)."""
    for i in range(20):
        fn(i)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=500, help="timed calls per path, per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="5k entities, 50 calls, 1 round")
    args = ap.parse_args()
    items, n, rounds = (5_000, 50, 1) if args.quick else (args.items, args.requests, args.rounds)
    rng = random.Random(0)
    with bench_deployment(items) as (dep, _, _):
        engines = {
            runtime: ServingEngine(
                dep, EnvironmentSpec("b4", latency_budget_ms=10_000.0, worker_threads=1, model_runtime=runtime)
            )
            for runtime in ("torch", "onnx")
        }
        version = dep.router.current
        assert version is not None
        model, featurizer, schema = version.bundle.model, version.bundle.featurizer, version.schema
        all_ids = dep.catalogue.page("", items)["entity_id"].to_list()
        requests = []
        for i in range(64):
            body = request_body(["home", "related", "search", "browse"][i % 4], rng, items, "x")
            body["candidates"] = {"ids": rng.sample(all_ids, CANDIDATES)}
            requests.append(RecommendRequest(**body))
        # the anchors' inputs, prepared outside the timed region (tensors ready, as in a training loop)
        records = [schema.normalize(r.canvas, r.context, version.titles) for r in requests]
        ctx1 = [context_tensors(featurizer.transform_records([rec])) for rec in records]
        ctx200 = [context_tensors(featurizer.transform_records([rec] * CANDIDATES)) for rec in records]
        frames = [
            dep.catalogue.page("", items).filter(pl.col("entity_id").is_in(r.candidates.ids or [])) for r in requests
        ]
        items200 = [item_tensors(featurizer.transform_catalogue(f)) for f in frames]
        stored = [version.candidate_rows(r.candidates.ids or []) for r in requests]
        tasks = [torch.full((CANDIDATES,), schema.task_index(r.canvas), dtype=torch.long) for r in requests]

        @torch.no_grad()
        def ranker(i: int) -> object:
            j = i % len(requests)
            cf, ce = model.encode_context(ctx1[j])
            feats, emb = stored[j]
            logits = model.rank(cf.expand(CANDIDATES, -1), ce.expand(CANDIDATES, -1), feats, emb, tasks[j])
            return torch.topk(model.blend_scores(logits, tasks[j]), 10)

        @torch.no_grad()
        def forward(i: int) -> object:
            j = i % len(requests)
            return model(ctx200[j], items200[j])

        onnx = version.onnx
        assert onnx is not None
        owner = torch.zeros(CANDIDATES, dtype=torch.long)
        no_sources = torch.zeros(CANDIDATES, 4)

        def ranker_onnx(i: int) -> object:
            j = i % len(requests)
            cf, ce = onnx.encode_context(ctx1[j])
            feats, emb = stored[j]
            scores, _ = onnx.rank(cf, ce, owner, feats, emb, tasks[j], no_sources)
            return np.argpartition(-scores, 10)[:10]

        def serving(i: int) -> object:
            return engines["torch"].recommend(requests[i % len(requests)])

        def serving_onnx(i: int) -> object:
            return engines["onnx"].recommend(requests[i % len(requests)])

        torch.set_num_threads(1)
        results: dict[str, list[float]] = {
            "serving": [],
            "serving_onnx": [],
            "ranker": [],
            "ranker_onnx": [],
            "forward": [],
        }
        paths = (
            ("ranker", ranker),
            ("ranker_onnx", ranker_onnx),
            ("serving", serving),
            ("serving_onnx", serving_onnx),
            ("forward", forward),
        )
        for _ in range(rounds):  # interleaved rounds: a noisy neighbour hits every path alike
            for name, fn in paths:
                results[name].append(timed(fn, n))
        for engine in engines.values():
            engine.close()
    best = {k: min(v) for k, v in results.items()}
    record = {
        "benchmark": "B4",
        "items": items,
        "candidates": CANDIDATES,
        "calls_per_round": n,
        "rounds": rounds,
        "ms": best,
        "ms_rounds": results,
        "ratio_vs_ranker": best["serving"] / best["ranker"],
        "ratio_vs_forward": best["serving"] / best["forward"],
        "onnx_ratio_vs_ranker": best["serving_onnx"] / best["ranker"],
        # the serving path's own overhead: through ONNX Runtime vs the same exported graphs called directly
        "onnx_ratio_vs_onnx_ranker": best["serving_onnx"] / best["ranker_onnx"],
        "target": 1.3,
        "met": min(best["serving"], best["serving_onnx"]) / best["ranker"] <= 1.3,
    }
    print(
        f"serving {best['serving']:.2f} ms | ranker alone {best['ranker']:.2f} ms ({record['ratio_vs_ranker']:.2f}x)"
        f" | full forward on 200 rows {best['forward']:.2f} ms ({record['ratio_vs_forward']:.2f}x)"
        f" | serving through ONNX Runtime {best['serving_onnx']:.2f} ms ({record['onnx_ratio_vs_ranker']:.2f}x;"
        f" {record['onnx_ratio_vs_onnx_ranker']:.2f}x its graphs called directly, {best['ranker_onnx']:.2f} ms)"
    )
    write_record(args.out, record)


if __name__ == "__main__":
    main()
