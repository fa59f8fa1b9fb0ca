"""Q1: the consolidated model vs one dedicated model per canvas (same code, same rows per canvas) vs
popularity, item co-occurrence (related) and BM25 (search), on MovieLens with a global time split.

    python bench/q1_consolidated_vs_separate.py --data ../shared/data/ml-latest-small --out q1.json [--quick]
        [--seeds N]

Writes {"canvases": {CANVAS: {MODEL: {"recall@10": x, "ndcg@10": y}}}, "objectives": ...,
"differences": {MODEL: {CANVAS: {METRIC: {"delta", "ci95", "verdict", "requests"}}}}, ...}: the consolidated
model minus every other model, request by request on the same requests, with paired bootstrap 95% intervals.
``--seeds N`` trains the consolidated and the dedicated models with N seeds (``--seed`` on) and compares
their per-request values averaged over the seeds (:func:`monorec.evaluation.compare.average_over_runs`);
each seed's means are kept under ``per_run``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_missing, write_record
from monorec.config import load_config
from monorec.data.prepared import prepare
from monorec.evaluation.compare import average_over_runs, paired_differences
from monorec.pipeline import compare_models, default_config, load_input


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/ml-latest-small")
    p.add_argument("--out", default="q1.json")
    p.add_argument("--config", default=str(default_config("movielens")))
    p.add_argument("--quick", action="store_true", help="an eighth of the users, one epoch of 15k rows (CI)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1, help="training seeds per model, from --seed on (averaged)")
    args = p.parse_args()
    if data_missing(args.data, "MovieLens"):
        return
    config = load_config(args.config)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=args.seed))
    catalogue, logs = load_input(config, args.data)
    if args.quick:
        users = logs["user_id"].unique().sort()
        keep = users.gather_every(8)
        logs = logs.filter(pl.col("user_id").is_in(keep.implode()))
        config = dataclasses.replace(
            config,
            train=dataclasses.replace(config.train, epochs=1, val_requests=100, max_train_rows=15_000),
            evaluate=dataclasses.replace(config.evaluate, max_requests=300),
        )
    started = time.perf_counter()
    prepared = prepare(config, catalogue, logs, inputs={"data": args.data})
    k = config.evaluate.k
    runs = []
    for seed in range(args.seed, args.seed + args.seeds):  # the baselines do not depend on the seed
        seeded = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
        runs.append(compare_models(seeded, prepared, progress=False, baselines=not runs)[1])
    results = dict(runs[0])
    for model in ("consolidated", "separate"):
        results[model] = average_over_runs([r[model] for r in runs], [f"recall@{k}", f"ndcg@{k}"])
    canvases: dict[str, dict[str, dict[str, float]]] = {}
    for model, report in results.items():
        for canvas, m in report["canvases"].items():
            entry = {f"recall@{k}": m[f"recall@{k}"], f"ndcg@{k}": m[f"ndcg@{k}"]}
            if "per_run" in m:  # each seed's means (--seeds)
                entry["per_run"] = m["per_run"]
            canvases.setdefault(canvas, {})[model] = entry
    empty = set(prepared.empty_canvases)  # no rows in this data (e.g. no tags: no search): not compared
    verdict = {
        c: None
        if c in empty
        else all(models["consolidated"][m] >= models["separate"][m] for m in (f"recall@{k}", f"ndcg@{k}"))
        for c, models in canvases.items()
    }
    objectives = {
        name: {c: m.get("objectives", {}) for c, m in results[name]["canvases"].items()}
        for name in ("consolidated", "separate")
    }
    fusion = {
        name: {c: m.get("source_weights", {}) for c, m in results[name]["canvases"].items()}
        for name in ("consolidated", "separate")
    }
    differences = paired_differences(results, "consolidated", [f"recall@{k}", f"ndcg@{k}"])
    for canvas, models in canvases.items():
        row = "  ".join(f"{name} {v[f'ndcg@{k}']:.4f}/{v[f'recall@{k}']:.4f}" for name, v in models.items())
        print(f"{canvas:>8}  ndcg/recall@{k}: {row}")
        for name in models:
            d = differences.get(name, {}).get(canvas, {}).get(f"ndcg@{k}")
            if d is not None:
                lo, hi = d["ci95"]
                print(f"          consolidated - {name}: ndcg {d['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}] {d['verdict']}")
    print("consolidated >= separate:", verdict)
    write_record(
        args.out,
        {
            "benchmark": "Q1",
            "quick": args.quick,
            "data": args.data,
            "seed": args.seed,
            "seeds": args.seeds,
            "k": k,
            "canvases": canvases,
            "consolidated_ge_separate": verdict,
            "differences": differences,
            "objectives": objectives,
            "source_weights": fusion,
            # the epoch each model kept (early stopping on its own validation), per seed; separate: of its budget
            "kept_epochs": [
                {
                    "consolidated": r["consolidated"].get("kept_epoch"),
                    "separate": {
                        c: {"kept": m.get("kept_epoch"), "of": m.get("epochs")}
                        for c, m in r["separate"]["canvases"].items()
                    },
                }
                for r in runs
            ],
            "rows": prepared.manifest["rows"],
            "empty_canvases": sorted(empty),
            "mixture": prepared.manifest["mixture"],
            "seconds": time.perf_counter() - started,
        },
    )


if __name__ == "__main__":
    main()
