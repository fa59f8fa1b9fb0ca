"""B14: requests while the live versions' loaders checkpoint.

A loader makes its version durable every ``deploy.loader_checkpoint_s`` (60 s): the vector index, the item
features, the lexical index and the user store are captured on the loader's thread (it applies nothing
meanwhile), then written into a new checkpoint folder and hashed on another thread while it goes on (at
100k entities ~0.7 s in all). It runs in the serving process, beside the request threads. B5 found its
switch windows were these checkpoints (a 60 s run places one per version inside the windows): this
benchmark sets the live versions' loaders to checkpoint every ``--every`` seconds, so that every run
meets many and measures what a request, and a change, pays for one.

Set-up as B5's: 100,000 entities, v0001 serving and v0002 on a 20% canary, 50 catalogue and 50 user
changes/s streaming; requests open-loop at ``--rate`` (60% home, 25% related, 15% search) on 4 threads,
the towers through ONNX Runtime. Anchor: the requests of the same run that began outside every checkpoint.

Reported: latency (from the scheduled arrival) p50 / p90 / p99 / max of the requests that began during a
checkpoint (capture or write) and of the others, their p99 ratio (B5's rule for a switch window: <= 2x),
how many took over 30 ms, and the checkpoints' own time (and their capture's). Also freshness: every
0.1 s a new entity (a category of its own) is published and searched for every 10 ms in every live
version until found (B6's probe); reported apart for the changes whose wait met a checkpoint. Run from
this tree against an older ``src`` (PYTHONPATH) it times that code's one-step checkpoints the same way.

    python bench/b14_checkpoint_under_load.py --out b14.json [--items 100000 --seconds 40 --rate 130]
        [--index hnsw|hnswlib] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import scratch_dir, write_record
from _serving import RUNTIMES, as_a_server, bench_config, synthetic_catalogue, two_version_registry
from b5_switch_under_load import CANARY_SHARE, make_request, serve
from b6_freshness import fresh_change, visible
from monorec.deployment import Deployment
from monorec.stream.changes import UserChange

SLOW_MS = 30.0


def percentiles(latency_ms: np.ndarray) -> dict[str, float]:
    if not len(latency_ms):
        return {"requests": 0}
    p50, p90, p99 = np.percentile(latency_ms, [50, 90, 99])
    return {
        "requests": len(latency_ms),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "max_ms": float(latency_ms.max()),
        f"over_{SLOW_MS:.0f}_ms": int((latency_ms > SLOW_MS).sum()),
    }


def watch_checkpoints(sink: Any, name: str, checkpoints: list[tuple[float, float, float, str]]) -> None:
    """Records (began, captured, durable, version) of each checkpoint ``sink`` makes: the loader's thread
    captures from ``began`` to ``captured`` (it applies nothing meanwhile), another thread writes until
    ``durable``. A sink whose checkpoint is one step (before the capture/write split) captures until durable."""
    if not hasattr(sink, "start_checkpoint"):
        one_step = sink.checkpoint

        def checkpoint(offset: str) -> None:
            began = time.monotonic()
            one_step(offset)
            checkpoints.append((began, time.monotonic(), time.monotonic(), name))

        sink.checkpoint = checkpoint
        return
    start = sink.start_checkpoint

    def start_checkpoint(offset: str) -> Any:
        began = time.monotonic()
        finish = start(offset)
        captured = time.monotonic()
        if finish is None:
            return None

        def timed_finish() -> None:
            finish()
            checkpoints.append((began, captured, time.monotonic(), name))

        return timed_finish

    sink.start_checkpoint = start_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--rate", type=float, default=130.0, help="requests/s offered (open loop)")
    ap.add_argument("--every", type=float, default=3.0, help="seconds between two checkpoints")
    ap.add_argument("--runtime", choices=RUNTIMES, default="onnx", help="the model path's runtime (model_runtime)")
    ap.add_argument("--index", choices=["hnsw", "hnswlib"], default="hnsw", help="the versions' index backend")
    ap.add_argument("--quick", action="store_true", help="5k entities, 6 s (checks the script runs)")
    args = ap.parse_args()
    as_a_server()
    n, seconds, every = (5_000, 6.0, 1.0) if args.quick else (args.items, args.seconds, args.every)
    tmp = scratch_dir()
    registry, _ = two_version_registry(tmp / "registry", bench_config(index=args.index), export_onnx=True)
    catalogue = synthetic_catalogue(n)
    ids = catalogue["entity_id"].to_list()
    results: list[tuple[float, float, float]] = []  # scheduled, start, end
    checkpoints: list[tuple[float, float, float, str]] = []  # began, captured, durable, version
    freshness: list[tuple[float, float]] = []  # published, visible in every live version
    stop = threading.Event()

    with Deployment(tmp / "dep", registry) as dep:
        dep.seed_catalogue(catalogue)
        dep.deploy("v0001")
        dep.open()
        dep.stage("v0002")
        dep.trials.start("v0002", "canary", share=CANARY_SHARE)
        serve_one = functools.partial(serve, dep, args.runtime)

        def stream() -> None:  # B5's changes: both versions apply them, so every checkpoint has work
            i, revision = 0, 1
            while not stop.is_set():
                revision += 1
                entity = ids[i % len(ids)]
                change = {"op": "upsert", "entity_id": entity, "revision": revision, "entity_type": "movie"}
                dep.publish([{**change, "title": f"updated title {i}", "categories": ["drama"]}])
                dep.publish([UserChange(f"u{i % 400}", revision, (("country", "us"),), (entity,))])
                i += 1
                stop.wait(0.02)

        for name, loader in dep.loaders.items():  # the loaders checkpoint on their own, every ``every`` s
            if name in dep.versions:
                loader.checkpoint_s = every
                watch_checkpoints(loader.sink, name, checkpoints)

        def probe() -> None:  # B6's freshness probe, one change at a time
            versions, k = list(dep.versions.values()), 0
            while not stop.is_set():
                tag = f"b14-{k}"
                k += 1
                published = time.monotonic()
                dep.publish([fresh_change(tag)])
                while not all(visible(v, tag) for v in versions) and time.monotonic() - published < 30:
                    time.sleep(0.01)  # the probe's searches share the cores with the requests measured
                freshness.append((published, time.monotonic()))
                stop.wait(0.1)

        lock = threading.Lock()

        def request(scheduled: float, seed: int) -> None:
            start = time.monotonic()
            serve_one(*make_request(random.Random(seed), ids))
            with lock:
                results.append((scheduled, start, time.monotonic()))

        streamer = threading.Thread(target=stream)
        streamer.start()
        for seed in range(300):  # warm-up: first calls of each runtime session, caches
            serve_one(*make_request(random.Random(seed), ids))
        prober = threading.Thread(target=probe)
        prober.start()
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures, i = [], 0
            while (now := time.monotonic()) - t0 < seconds:
                scheduled = t0 + i / args.rate
                if scheduled > now:
                    time.sleep(scheduled - now)
                futures.append(pool.submit(request, scheduled, 10_000 + i))
                i += 1
        stop.set()
        streamer.join()
        prober.join()
        failed = sum(f.exception() is not None for f in futures)

    latency = np.array([(end - scheduled) * 1000 for scheduled, _, end in results])
    starts = np.array([start for _, start, _ in results])
    during = np.zeros(len(results), dtype=bool)
    for began, _, ended, _ in checkpoints:
        during |= (starts >= began) & (starts <= ended)
    capturing = np.zeros(len(results), dtype=bool)
    for began, captured, _, _ in checkpoints:
        capturing |= (starts >= began) & (starts <= captured)
    inside, outside = percentiles(latency[during]), percentiles(latency[~during])
    ratio = inside.get("p99_ms", float("nan")) / outside.get("p99_ms", float("nan"))
    durations = [(ended - began) * 1000 for began, _, ended, _ in checkpoints]
    captures = [(captured - began) * 1000 for began, captured, _, _ in checkpoints]
    published, seen = np.array([p for p, _ in freshness]), np.array([v for _, v in freshness])
    fresh_ms = (seen - published) * 1000
    fresh_during = np.zeros(len(freshness), dtype=bool)
    for began, _, ended, _ in checkpoints:
        fresh_during |= (published <= ended) & (seen >= began)  # its wait met this checkpoint
    record: dict[str, Any] = {
        "benchmark": "B14",
        "items": n,
        "seconds": seconds,
        "offered_rps": args.rate,
        "runtime": args.runtime,
        "index": args.index,
        "failed": failed,
        "checkpoints": len(checkpoints),
        "checkpoint_ms_p50": float(np.median(durations)) if durations else float("nan"),
        "checkpoint_ms_max": max(durations, default=float("nan")),
        "capture_ms_p50": float(np.median(captures)) if captures else float("nan"),
        "capture_ms_max": max(captures, default=float("nan")),
        "all_requests": percentiles(latency),
        "during_checkpoints": inside,
        "outside_checkpoints": outside,
        "during_captures": percentiles(latency[capturing]),
        "during_writes": percentiles(latency[during & ~capturing]),
        "p99_ratio": ratio,
        "freshness_meeting_checkpoints": percentiles(fresh_ms[fresh_during]),
        "freshness_not_meeting_checkpoints": percentiles(fresh_ms[~fresh_during]),
        "quick": args.quick,
    }
    print(
        f"{len(checkpoints)} checkpoints, median {record['checkpoint_ms_p50']:.0f} ms (its capture "
        f"{record['capture_ms_p50']:.0f} ms); requests {len(results)} "
        f"(failed {failed}); p99 outside {outside.get('p99_ms', float('nan')):.1f} ms, during "
        f"{inside.get('p99_ms', float('nan')):.1f} ms (p90 {inside.get('p90_ms', float('nan')):.1f}, max "
        f"{inside.get('max_ms', float('nan')):.1f}): {ratio:.2f}x (target <= 2); freshness p50 "
        f"{record['freshness_not_meeting_checkpoints'].get('p50_ms', float('nan')):.0f} ms, meeting a checkpoint "
        f"{record['freshness_meeting_checkpoints'].get('p50_ms', float('nan')):.0f} ms"
    )
    write_record(args.out, record)


if __name__ == "__main__":
    main()
