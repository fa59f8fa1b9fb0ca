"""Q1 pooled over independent datasets: one verdict per (model, canvas, metric) from several Q1 records.

    python bench/q1_pool.py runs/q1_world0.json runs/q1_world1.json ... --out runs/q1_pooled.json

Why: a synthetic world's test split holds 150-430 requests per canvas, so one world's paired bootstrap
interval is about +-0.01 NDCG@10 and its verdicts flip from one generator seed to the next (a different
world, not a different training). Each record already holds, per comparison, the consolidated model minus
the other model over its requests and the 95% interval; this pools them as if every world's requests were
one test set: the difference is the request-weighted mean of the worlds' differences, its standard error
``sqrt(sum (n_i se_i)^2) / sum n_i`` with each world's ``se_i`` read from its interval's width, ``(hi - lo) /
(2 * 1.96)`` (the worlds are independent draws). Weighting by requests, not by inverse variance: a world
where the model copies a baseline has a narrow interval against it, and inverse-variance weights would let
that world decide the pooled verdict.

Writes {"records": [paths], "pooled": {MODEL: {CANVAS: {METRIC: {"delta", "ci95", "verdict", "per_record":
[deltas], "requests"}}}}}. Reads only the records: nothing is trained or evaluated again.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

Z95 = 1.96


def pool(differences: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-record {"delta", "ci95", "requests"} of one comparison -> the pooled one (see the module)."""
    n = [d["requests"] for d in differences]
    se = [(d["ci95"][1] - d["ci95"][0]) / (2 * Z95) for d in differences]
    delta = sum(k * d["delta"] for k, d in zip(n, differences, strict=True)) / sum(n)
    half = Z95 * math.sqrt(sum((k * s) ** 2 for k, s in zip(n, se, strict=True))) / sum(n)
    lo, hi = delta - half, delta + half
    verdict = "better" if lo > 0 else "worse" if hi < 0 else "not significant"
    return {
        "delta": delta,
        "ci95": [lo, hi],
        "verdict": verdict,
        "per_record": [d["delta"] for d in differences],
        "requests": sum(d["requests"] for d in differences),
    }


def pool_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The comparisons present in every record, pooled: MODEL -> CANVAS -> METRIC -> pooled result."""
    out: dict[str, Any] = {}
    first = records[0]["differences"]
    for model, canvases in first.items():
        for canvas, metrics in canvases.items():
            for metric in metrics:
                found = [r["differences"].get(model, {}).get(canvas, {}).get(metric) for r in records]
                if all(f is not None for f in found):
                    out.setdefault(model, {}).setdefault(canvas, {})[metric] = pool(found)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="+", help="Q1 JSON records (bench/q1_consolidated_vs_separate.py --out)")
    p.add_argument("--out", help="write the pooled comparisons as JSON")
    args = p.parse_args()
    records = [json.loads(Path(path).read_text()) for path in args.records]
    pooled = pool_records(records)
    for model, canvases in pooled.items():
        for canvas, metrics in canvases.items():
            for metric, r in metrics.items():
                each = ", ".join(f"{x:+.4f}" for x in r["per_record"])
                print(
                    f"consolidated - {model:<20} {canvas:>8} {metric:<10} {r['delta']:+.4f} "
                    f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] {r['verdict']:<16} (each: {each})"
                )
    if args.out:
        Path(args.out).write_text(json.dumps({"records": args.records, "pooled": pooled}, indent=1))


if __name__ == "__main__":
    main()
