"""B5: version switches under load, with canary traffic, catalogue changes and users' events streaming in.

Two versions are deployed over the same catalogue: v0001 serving, v0002 ready beside it on a canary trial
(a sticky 20% of the requests, by user; both fed by their loaders). Requests arrive open-loop at ~70% of
the measured capacity (mixed canvases) for the whole run; catalogue changes stream at 50/s and user
changes (a user's new state, as events make them) at 50/s; a third of the way in the canary is promoted
(a switch to v0002, ending the trial), two thirds in it is rolled back. Every request pins ONE version (the
candidate when the canary takes it), and the record counts:

- ``failed``: requests that raised;
- ``mismatched``: answers whose version is not the version object the request pinned;
- ``stale_after_switch``: requests that STARTED after a switch had returned but were served by the old one;
- ``canary``: the share of requests the candidate answered while the trial ran (target: its share);
- ``p99_ms_steady`` / ``p99_ms_switch``: latency (from the scheduled arrival, queueing included) outside /
  inside the switch windows (0.5 s before a switch until 2 s after it returned). Target: 0 / 0 / 0, and
  p99 in the switch windows <= 2x steady.

With ``--workers N`` the requests go over HTTP to ``monorec serve --workers N``: this process is the owner
(lifecycle, loaders, the switches), N replica processes answer on one port (``_http.served_replicas``);
each request thread keeps one connection (the kernel assigns it to a replica). The answer names the
version that served it, which ``stale_after_switch`` and ``canary`` read; ``mismatched`` needs the pinned
version object and is counted in process only (the replicas pin as the owner does: the same router).

The context tower and the ranker run through the versions' ONNX export in ONNX Runtime (``--runtime
onnx``, the default, as in B3 and B8) or PyTorch eager (``--runtime torch``, the reference; B5's runtime
before 2026-12-05).

    python bench/b5_switch_under_load.py --out b5.json [--items 100000 --seconds 60] [--workers 2] [--rate R]
        [--runtime onnx|torch] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import scratch_dir, write_record
from _http import bench_env, served_replicas
from _serving import RUNTIMES, as_a_server, bench_config, synthetic_catalogue, two_version_registry
from monorec.deployment import Deployment
from monorec.stream.changes import UserChange

CANVASES = [("home", 0.6), ("related", 0.25), ("search", 0.15)]
CANARY_SHARE = 0.2
WORDS = ["space", "love", "war", "ghost", "city", "family", "robot", "dream"]


def make_request(rng: random.Random, ids: list[str]) -> tuple[str, dict[str, Any]]:
    canvas = rng.choices([c for c, _ in CANVASES], [w for _, w in CANVASES])[0]
    if canvas == "home":
        return canvas, {"user_id": f"u{rng.randrange(400)}", "country": rng.choice(["us", "fr", "de"])}
    if canvas == "related":
        return canvas, {"source_item_id": rng.choice(ids)}
    return canvas, {"query": " ".join(rng.sample(WORDS, 2))}


def serve(dep: Deployment, runtime: str, canvas: str, context: dict[str, Any]) -> tuple[str, str]:
    """One request: (the pinned version's name, the version named by the answer); a canary's share of
    requests pins the version on trial, as the serving engine does. The towers run on ``runtime``."""
    trial = dep.router.trial
    with dep.router.pin(candidate=trial is not None and trial.takes(context)) as version:
        answer = version.recommend(canvas, context, k=10, runtime=runtime)  # type: ignore[arg-type]
        return version.name, answer.version


class HttpClient:
    """One request over HTTP to the replicas' port, one keep-alive connection per thread: ("", the version
    named by the answer); a failed request raises."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._local = threading.local()

    def __call__(self, canvas: str, context: dict[str, Any]) -> tuple[str, str]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        body = json.dumps({"canvas": canvas, "context": context, "k": 10})
        try:
            conn.request("POST", "/v1/recommend", body, {"content-type": "application/json"})
            answer = conn.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException):
            self._local.conn = None  # a new connection next time
            conn.close()
            raise
        if answer.status != 200:
            raise RuntimeError(f"HTTP {answer.status}: {data[:200]!r}")
        return "", json.loads(data)["version"]


def capacity(serve_one: Any, ids: list[str], seconds: float, threads: int = 4) -> float:
    done = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        while time.monotonic() < stop:
            serve_one(*make_request(rng, ids))
            with lock:
                done += 1

    pool = [threading.Thread(target=worker, args=(s,)) for s in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return done / seconds


def run(
    dep: Deployment, serve_one: Any, ids: list[str], seconds: float, args: argparse.Namespace
) -> tuple[list[tuple[float, float, float, str, str, bool]], list[dict[str, Any]], float, float]:
    """The measured run: capacity probed, then requests open-loop at ``args.load`` of it while changes
    stream and the switcher promotes the canary, then rolls back. Returns (results, switches, capacity,
    offered rate)."""
    clients = 8 if args.workers else 4  # over HTTP a request also waits on the network round trip
    results: list[tuple[float, float, float, str, str, bool]] = []  # scheduled, start, end, pinned, named, ok
    lock = threading.Lock()

    def request(scheduled: float, seed: int) -> None:
        start = time.monotonic()
        ok, pinned, named = True, "", ""
        try:
            pinned, named = serve_one(*make_request(random.Random(seed), ids))
        except Exception:
            ok = False
        with lock:
            results.append((scheduled, start, time.monotonic(), pinned, named, ok))

    stop = threading.Event()

    def stream() -> None:
        i, revision = 0, 1
        while not stop.is_set():
            revision += 1
            dep.publish(
                [
                    {
                        "op": "upsert",
                        "entity_id": ids[i % len(ids)],
                        "revision": revision,
                        "entity_type": "movie",
                        "title": f"updated title {i}",
                        "categories": ["drama"],
                    }
                ]
            )
            user = f"u{i % 400}"  # the home requests' users: their stored encodings change under them
            dep.publish([UserChange(user, revision, (("country", ("us", "fr", "de")[i % 3]),), (ids[i % len(ids)],))])
            i += 1
            stop.wait(0.02)

    switches: list[dict[str, Any]] = []

    def switcher() -> None:
        for when, action in ((seconds / 3, "promote"), (2 * seconds / 3, "rollback")):
            while time.monotonic() - t0 < when:
                time.sleep(0.01)
            before = dep.router.current.name  # type: ignore[union-attr]
            began = time.monotonic()
            if action == "promote":
                dep.trials.promote()  # the switch to the candidate; the trial ends
            else:
                dep.rollback()
            switches.append(
                {
                    "began": began,
                    "returned": time.monotonic(),
                    "from": before,
                    "to": dep.router.current.name,  # type: ignore[union-attr]
                    "action": action,
                }
            )

    streamer = threading.Thread(target=stream)
    streamer.start()  # capacity is measured with the loaders busy, as during the run
    capacity(serve_one, ids, 1.0 if args.quick else 3.0, clients)  # warm-up
    cap = capacity(serve_one, ids, 2.0 if args.quick else 15.0, clients)
    rate = args.rate or args.load * cap
    print(f"capacity {cap:.0f} req/s (closed loop, {clients} threads, changes streaming); offered {rate:.0f} req/s")

    t0 = time.monotonic()
    threads = [streamer, threading.Thread(target=switcher)]
    threads[1].start()
    with ThreadPoolExecutor(max_workers=clients) as pool:  # as many workers as the capacity probe's threads
        i = 0
        while (now := time.monotonic()) - t0 < seconds:
            scheduled = t0 + i / rate
            if scheduled > now:
                time.sleep(scheduled - now)
            pool.submit(request, scheduled, i)
            i += 1
    stop.set()
    for t in threads:
        t.join()

    return results, switches, cap, rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--load", type=float, default=0.7, help="share of the measured capacity")
    ap.add_argument(
        "--rate", type=float, default=0.0, help="offer this many req/s instead (two builds compared at one load)"
    )
    ap.add_argument("--workers", type=int, default=0, help="replica processes (0: requests in this process)")
    ap.add_argument("--runtime", choices=RUNTIMES, default="onnx", help="the model path's runtime (model_runtime)")
    ap.add_argument("--quick", action="store_true", help="5k entities, 6 s (checks the script runs)")
    args = ap.parse_args()
    as_a_server()
    n, seconds = (5_000, 6.0) if args.quick else (args.items, args.seconds)
    tmp = scratch_dir()
    # published with their ONNX export, as B3 and B8 serve them (``--runtime torch``: PyTorch eager)
    registry, _ = two_version_registry(tmp / "registry", bench_config(index="hnsw"), export_onnx=True)
    catalogue = synthetic_catalogue(n)
    ids = catalogue["entity_id"].to_list()

    with Deployment(tmp / "dep", registry) as dep:
        dep.seed_catalogue(catalogue)
        dep.deploy("v0001")
        dep.open()
        dep.stage("v0002")  # ready beside v0001, then a canary of it
        trial = dep.trials.start("v0002", "canary", share=CANARY_SHARE)
        with contextlib.ExitStack() as stack:
            if args.workers:
                replicas = served_replicas(dep, tmp / "dep", registry.root, bench_env(args.runtime), args.workers)
                serve_one: Any = HttpClient(stack.enter_context(replicas))
            else:
                serve_one = functools.partial(serve, dep, args.runtime)
            results, switches, cap, rate = run(dep, serve_one, ids, seconds, args)

    promoted = switches[0]["began"] if switches else float("inf")
    # the version that answered (in process it is the pinned one, or `mismatched` counts it)
    during = [named for _, start, _, _, named, ok in results if ok and start < promoted]
    canary = {
        "version": trial.version,
        "share": trial.share,
        "requests": len(during),
        "answered_by_candidate": sum(p == trial.version for p in during) / max(len(during), 1),
    }
    failed = sum(not ok for *_, ok in results)
    mismatched = None if args.workers else sum(ok and pinned != named for _, _, _, pinned, named, ok in results)
    stale = 0
    in_window = np.zeros(len(results), dtype=bool)
    latency = np.array([(end - scheduled) * 1000 for scheduled, _, end, *_ in results])
    for j, s in enumerate(switches):
        next_began = switches[j + 1]["began"] if j + 1 < len(switches) else float("inf")
        for r, (_, start, _, _, named, ok) in enumerate(results):
            if ok and s["returned"] < start < next_began and named == s["from"]:
                stale += 1  # began after this switch returned (and before the next), yet on the old version
            if s["began"] - 0.5 <= start <= s["returned"] + 2.0:
                in_window[r] = True
    p99_steady = float(np.percentile(latency[~in_window], 99))
    p99_switch = float(np.percentile(latency[in_window], 99)) if in_window.any() else float("nan")
    record = {
        "benchmark": "B5",
        "items": n,
        "seconds": seconds,
        "capacity_rps": cap,
        "offered_rps": rate,
        "achieved_rps": len(results) / seconds,
        "threads": {"workers": 8 if args.workers else 4, "torch": torch.get_num_threads(), "faiss": 1},
        "replicas": args.workers,
        "runtime": args.runtime,
        "requests": len(results),
        "failed": failed,
        "mismatched": mismatched,
        "stale_after_switch": stale,
        "p50_ms_steady": float(np.percentile(latency[~in_window], 50)),
        "p99_ms_steady": p99_steady,
        "p99_ms_switch": p99_switch,
        "switch_p99_ratio": p99_switch / p99_steady,
        "switches": [{**s, "switch_ms": (s["returned"] - s["began"]) * 1000} for s in switches],
        "canary": canary,
        "quick": args.quick,
    }
    print(
        f"failed {failed}, mismatched {mismatched}, stale after switch {stale}; p99 steady {p99_steady:.1f} ms, "
        f"in switch windows {p99_switch:.1f} ms; canary answered {canary['answered_by_candidate']:.1%} of "
        f"{canary['requests']} requests before the promotion (share {trial.share:.0%})"
    )
    write_record(args.out, record)


if __name__ == "__main__":
    main()
