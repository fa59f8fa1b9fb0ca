"""B8: capacity at the SLO - the most requests/s served with p99 <= 50 ms, on mixed canvases (60% home,
25% related, 15% search) over 100k entities, next to the bare FastAPI echo's capacity on the same machine
in the same run (same schema, same uvicorn settings). Load from a separate process on loopback: closed-loop
connections, swept 1, 2, 4, ... until p99 passes the SLO twice in a row; the capacity is the best
throughput of a level that met it. The ratio ours / echo is reported (raise it release by release).

    python bench/b8_capacity.py --out b8.json [--items 100000 --seconds 8] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_record
from _http import bench_deployment, bench_env, echo_app, load, percentiles, served, serving
from _serving import RUNTIMES

MIX = "home=0.6,related=0.25,search=0.15"
SLO_MS = 50.0


def sweep(port: int, items: int, seconds: float, levels: list[int]) -> dict[str, Any]:
    rows = []
    misses = 0
    for concurrency in levels:
        r = load(port, concurrency=concurrency, seconds=seconds, mix=MIX, items=items)
        pooled = [ms for values in r["latencies_ms"].values() for ms in values]
        row = {"concurrency": concurrency, "rps": r["rps"], **percentiles(pooled), "fallbacks": r["fallbacks"]}
        row["met"] = row["p99"] <= SLO_MS and set(r["statuses"]) == {"200"}
        rows.append(row)
        print(f"  c={concurrency:>3}: {row['rps']:7.0f} req/s, p50 {row['p50']:6.2f} ms, p99 {row['p99']:6.2f} ms")
        misses = 0 if row["met"] else misses + 1
        if misses == 2:
            break
    capacity = max((row["rps"] for row in rows if row["met"]), default=0.0)
    return {"levels": rows, "capacity_rps": capacity}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=8.0, help="per concurrency level")
    ap.add_argument("--runtime", choices=RUNTIMES, default="onnx", help="the model path's runtime (model_runtime)")
    ap.add_argument("--workers", type=int, default=0, help="serving replicas (0: the API in this process)")
    ap.add_argument("--quick", action="store_true", help="5k entities, 1 s per level, levels 1 and 4")
    args = ap.parse_args()
    items, seconds = (5_000, 1.0) if args.quick else (args.items, args.seconds)
    levels = [1, 4] if args.quick else [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128]
    with bench_deployment(items) as (dep, root, registry):
        print("echo:")
        with served(echo_app()) as port:
            echo = sweep(port, items, seconds, levels)
        print("monorec:")
        with serving(dep, root, registry, bench_env(args.runtime), args.workers) as port:
            ours = sweep(port, items, seconds, levels)
    ratio = ours["capacity_rps"] / echo["capacity_rps"] if echo["capacity_rps"] else 0.0
    print(f"capacity at p99 <= {SLO_MS:.0f} ms: ours {ours['capacity_rps']:.0f} req/s, echo {echo['capacity_rps']:.0f}")
    write_record(
        args.out,
        {
            "benchmark": "B8",
            "items": items,
            "mix": MIX,
            "slo_p99_ms": SLO_MS,
            "seconds_per_level": seconds,
            "environment_knobs": bench_env(args.runtime).to_dict(),
            "workers": args.workers,
            "index": "hnsw",
            "ours": ours,
            "echo": echo,
            "ratio": ratio,
        },
    )


if __name__ == "__main__":
    main()
