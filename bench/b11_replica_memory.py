"""B11: resident memory of 1 vs 2 serving replicas over the same deployment (1M entities by default).

The deployment of B3/B8 (HNSW index, ONNX export, v0001 serving) is built in this process, which then acts
as the owner of ``monorec serve --workers N`` (see ``_http.served_replicas``); N replica processes load the
version's checkpoint and follow the log. Once every replica answers /readyz, and after a short load so
that the request path's pages are touched, each replica's memory is read from /proc/PID/smaps_rollup:

- ``rss``: resident pages, shared ones counted in full;
- ``pss``: proportional set size, a page shared by k processes counted 1/k in each: the sum over replicas
  is what they cost the machine together;
- ``uss``: private pages (what killing that replica would free).

The figure of the issue: ``added_share`` = (PSS of the two replicas together - PSS of one replica alone)
/ PSS of one alone. Target: <= 0.35 (the second replica shares the first's read-only pages).

    python bench/b11_replica_memory.py --out b11.json [--items 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_record
from _http import bench_deployment, bench_env, load, served_replicas

FIELDS = {"Rss": "rss", "Pss": "pss", "Private_Clean": "private", "Private_Dirty": "private"}


def memory_mib(pid: int) -> dict[str, float]:
    """rss, pss and uss of a process in MiB (Linux's /proc/PID/smaps_rollup)."""
    totals = {"rss": 0.0, "pss": 0.0, "uss": 0.0}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            kib = float(rest.split()[0])
            totals["uss" if FIELDS[key] == "private" else FIELDS[key]] += kib / 1024
    return totals


def replica_pids(port: int, workers: int) -> dict[str, int]:
    """replica name -> pid, from the /readyz answers of the shared port (the kernel spreads connections)."""
    pids: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while len(pids) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only replicas {sorted(pids)} answered /readyz")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            body = json.loads(answer.read())
        pids[body["replica"]] = int(body["pid"])
    return pids


def measure(dep: Any, root: Path, registry: Path, workers: int, items: int, seconds: float) -> dict[str, Any]:
    with served_replicas(dep, root, registry, bench_env("onnx"), workers) as port:
        pids = replica_pids(port, workers)
        touched = load(
            port, concurrency=2 * workers, seconds=seconds, mix="home=0.6,related=0.25,search=0.15", items=items
        )
        replicas = {name: memory_mib(pid) for name, pid in sorted(pids.items())}
    total = {key: sum(r[key] for r in replicas.values()) for key in ("rss", "pss", "uss")}
    readings = "; ".join(
        f"{n} rss {m['rss']:.0f} pss {m['pss']:.0f} uss {m['uss']:.0f} MiB" for n, m in replicas.items()
    )
    print(f"{workers} replica(s): {readings}")
    return {"replicas": replicas, "total_mib": total, "warm_up_requests": touched["requests"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=5.0, help="load before each reading")
    ap.add_argument("--quick", action="store_true", help="20k entities, 1 s of load (checks the script runs)")
    args = ap.parse_args()
    items, seconds = (20_000, 1.0) if args.quick else (args.items, args.seconds)
    started = time.perf_counter()
    with bench_deployment(items) as (dep, root, registry):
        owner = memory_mib(os.getpid())
        one = measure(dep, root, registry, 1, items, seconds)
        two = measure(dep, root, registry, 2, items, seconds)
    alone = one["total_mib"]["pss"]
    added = two["total_mib"]["pss"] - alone
    print(
        f"one replica {alone:.0f} MiB (PSS); a second adds {added:.0f} MiB = {added / alone:.2f} of the first "
        "(target <= 0.35)"
    )
    write_record(
        args.out,
        {
            "benchmark": "B11",
            "items": items,
            "owner_mib": owner,
            "one": one,
            "two": two,
            "added_mib": added,
            "added_share": added / alone,
            "target_share": 0.35,
            "met": added / alone <= 0.35,
            "quick": args.quick,
            "seconds": time.perf_counter() - started,
        },
    )


if __name__ == "__main__":
    main()
