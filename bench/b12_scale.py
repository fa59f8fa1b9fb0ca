"""B12: how the offline pipeline's cost grows with the data: prepare + train + bulk embed on synthetic
worlds of 1x, 10x and 50x the demo's size: its users and requests (the logs) scaled, its catalogue of
1,500 entities kept (the world generator scores every entity for every request; B9 scales the catalogue to
1M entities).

Each stage runs in its own process, so that its peak memory (the process's maximum resident set) is its
own: the in-memory prepare (the anchor: every table held whole), the streaming prepare (polars' streaming
engine, requests prepared ``--bucket-rows`` at a time and spilled to Parquet; ``monorec prepare
--streaming``), one training epoch reading the merged rows in shards of ``--shard-rows`` from the opened
prepared folder (``train.shard_rows``), seeding a deployment with every user's latest state (aggregated
from the prepared rows on polars' streaming engine), and the bulk pass of the trained version
(``Deployment.stage``: the catalogue and every user encoded). Reported per scale and stage: wall seconds,
peak memory, rows (log rows, training rows, users, entities + users) per second.

    python bench/b12_scale.py --out b12.json [--scales 1 10 50] [--shard-rows 100000]
        [--bucket-rows 250000] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import scratch_dir, write_record
from _serving import bench_config
from monorec.data.world import WorldSpec, write_world

DEMO = WorldSpec()
STAGES = ("prepare_memory", "prepare_streaming", "train", "seed", "embed")


def world_spec(scale: float) -> WorldSpec:
    return dataclasses.replace(
        DEMO,
        n_users=round(DEMO.n_users * scale),
        n_requests=round(DEMO.n_requests * scale),
    )


def run_stage(stage: str, work: Path, shard_rows: int, bucket_rows: int) -> dict[str, Any]:
    """One stage in this process; returns its figures (peak memory read by the caller's child process)."""
    from monorec.data.prepared import PreparedData
    from monorec.pipeline import prepare_stage, train_stage

    config = bench_config()
    config = dataclasses.replace(
        config,
        labels=dataclasses.replace(config.labels, bucket_rows=bucket_rows),
        train=dataclasses.replace(config.train, epochs=1, max_train_rows=0, shard_rows=shard_rows),
    )
    started = time.perf_counter()
    if stage in ("prepare_memory", "prepare_streaming"):
        manifest = prepare_stage(config, work / "world", work / stage, streaming=stage == "prepare_streaming")
        rows = sum(sum(counts.values()) for counts in manifest["rows"].values())
    elif stage == "train":
        bundle = train_stage(work / "prepare_streaming", work / "run", config=config, progress=False)
        rows = int(bundle.meta["train_rows"])
        (work / "train_shards").write_text(str(bundle.meta["train_shards"]))
    elif stage == "seed":
        import polars as pl

        from monorec.bundle import ModelBundle
        from monorec.data.labels import SPLITS
        from monorec.deployment import Deployment
        from monorec.registry import Registry
        from monorec.users.seed import user_states

        registry = Registry(work / "registry")
        registry.publish(ModelBundle.load(work / "run"), {}, force=True)  # a deployment starts from a version
        started = time.perf_counter()
        opened = PreparedData.open(work / "prepare_streaming")
        users = user_states(pl.concat([opened.scan(s) for s in SPLITS]), config)  # streamed
        with Deployment(work / "deployment", registry, progress=False) as dep:
            dep.seed_catalogue(opened.catalogue)
            dep.seed_users(users)
        rows = len(users)
    else:
        from monorec.deployment import Deployment

        with Deployment(work / "deployment", work / "registry", progress=False) as dep:
            dep.stage(dep.registry.versions()[-1].version)
            rows = dep.catalogue.count() + dep.catalogue.user_count()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": rows}


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started: VmHWM, not ru_maxrss, which on Linux keeps the
    high-water mark of the process that forked it (the parent holding a generated world)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best there is


def measure(stage: str, work: Path, shard_rows: int, bucket_rows: int) -> dict[str, Any]:
    """Runs one stage in a child process; its figures and its peak resident memory."""
    sizes = ["--shard-rows", str(shard_rows), "--bucket-rows", str(bucket_rows)]
    done = subprocess.run(
        [sys.executable, __file__, "--stage", stage, "--work", str(work), *sizes],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"stage {stage} failed:\n{done.stderr[-4000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["rows_per_s"] = figures["rows"] / figures["seconds"]
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out")
    ap.add_argument("--scales", type=float, nargs="+", default=[1, 10, 50])
    ap.add_argument("--shard-rows", type=int, default=100_000, help="train.shard_rows")
    ap.add_argument("--bucket-rows", type=int, default=250_000, help="labels.bucket_rows")
    ap.add_argument("--quick", action="store_true", help="scales 0.05 and 0.1, shards and buckets of 5,000 rows")
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # a child process: one stage
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        figures = run_stage(args.stage, Path(args.work), args.shard_rows, args.bucket_rows)
        figures["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(figures))
        return
    if not args.out:
        ap.error("--out is required")
    scales = [0.05, 0.1] if args.quick else args.scales
    shard_rows = 5_000 if args.quick else args.shard_rows
    bucket_rows = 5_000 if args.quick else args.bucket_rows
    results = []
    for scale in scales:
        work = scratch_dir(f"b12-{scale}x-")
        spec = world_spec(scale)
        write_world(work / "world", spec)
        row: dict[str, Any] = {
            "scale": scale,
            "users": spec.n_users,
            "entities": spec.n_items,
            "requests": spec.n_requests,
        }
        for stage in STAGES:
            row[stage] = measure(stage, work, shard_rows, bucket_rows)
            print(
                f"{scale:>5}x {stage:<18} {row[stage]['seconds']:8.1f} s  peak {row[stage]['peak_rss_mb']:8.0f} MB  "
                f"{row[stage]['rows_per_s']:>10,.0f} rows/s",
                flush=True,
            )
        row["train"]["shards"] = int((work / "train_shards").read_text())
        results.append(row)
        shutil.rmtree(work, ignore_errors=True)  # a 50x world with its stages' outputs is ~400 MB
    first = results[0]
    growth = {
        stage: {f"{r['scale']}x": r[stage]["peak_rss_mb"] / first[stage]["peak_rss_mb"] for r in results}
        for stage in STAGES
    }
    print("peak memory relative to the smallest world:", json.dumps(growth))
    write_record(
        args.out,
        {
            "benchmark": "B12",
            "shard_rows": shard_rows,
            "bucket_rows": bucket_rows,
            "demo_world": dataclasses.asdict(DEMO),
            "results": results,
            "peak_memory_growth": growth,
            "command": " ".join(["python", "bench/b12_scale.py", *sys.argv[1:]]),
        },
    )


if __name__ == "__main__":
    main()
