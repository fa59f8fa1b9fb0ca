"""B6: freshness — a catalogue change until it is returned by search in EVERY live version.

Two versions are live (serving + standby, each with its loader). New entities are published to the
embedded change log at 10, 100 and 1000 changes/s; each carries a unique category and a unique title word,
and a checker searches every live version until the entity comes back: from the vector index (with that
category as filter) and from the lexical index (the word as query), each timed. Meanwhile a query thread
measures recommendation latency; the same queries are measured idle first.

Anchor: the direct in-process insert (embed the entity with the version's item tower, upsert it into its
index) followed by the same search. Targets: p99 <= 1 s; query p99 during ingest <= 1.5x idle.

The queries' towers run through the versions' ONNX export (``--runtime onnx``, the default since
2026-12-05, as B3 and B8 serve them) or PyTorch eager (``--runtime torch``, B6's runtime before).

    python bench/b6_freshness.py --out b6.json [--items 100000 --seconds 10] [--runtime onnx|torch] [--quick]
"""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import scratch_dir, write_record
from _serving import bench_config, freshness_arguments, synthetic_catalogue, two_version_registry
from monorec.deployment import Deployment
from monorec.deployment.version import ServingVersion
from monorec.index import EntityFilter
from monorec.stream.changes import Change

CHECK_EVERY_S = 0.005  # how often the checker asks whether the oldest pending change is visible yet


def word(tag: str) -> str:
    """The tag as one token of the lexical analyzer (which splits on "-")."""
    return tag.replace("-", "x")


def fresh_change(tag: str, revision: int = 1) -> Change:
    return Change("upsert", tag, revision, "movie", f"brand new {word(tag)}", (tag,))


def visible(version: ServingVersion, tag: str) -> bool:
    return (
        version.index.search(np.zeros((1, version.index.dim), np.float32), 1, EntityFilter(categories=(tag,))).row(0)
        != []
    )


def lexically_visible(version: ServingVersion, tag: str) -> bool:
    return [e for e, _ in version.sources.lexical.search([word(tag)], 1)[0]] == [tag]


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.array(values) if values else np.array([np.nan])
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "n": len(values)}


def query_latencies(dep: Deployment, runtime: str, stop: threading.Event, out: list[float], rate: float = 50.0) -> None:
    rng = random.Random(0)
    while not stop.is_set():
        started = time.perf_counter()
        with dep.router.pin() as version:
            version.recommend("home", {"user_id": f"u{rng.randrange(400)}"}, k=10, runtime=runtime)  # type: ignore[arg-type]
        out.append((time.perf_counter() - started) * 1000)
        stop.wait(max(0.0, 1 / rate - (time.perf_counter() - started)))


def run_rate(dep: Deployment, rate: int, seconds: float, runtime: str) -> dict[str, Any]:
    versions = list(dep.versions.values())
    published: dict[str, float] = {}
    seen: dict[str, float] = {}  # visible in every version's vector index
    seen_lexical: dict[str, float] = {}  # ... and lexical index
    pending: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def publisher() -> None:
        tick = 0.01 if rate >= 100 else 1.0 / rate
        per_tick = max(1, round(rate * tick))
        started, i = time.monotonic(), 0
        while time.monotonic() - started < seconds:
            tags = [f"f{rate}-{i + j}" for j in range(per_tick)]
            now = time.monotonic()
            dep.publish([fresh_change(t) for t in tags])
            with lock:
                for t in tags:
                    published[t] = now
                    pending.append(t)
            i += per_tick
            time.sleep(max(0.0, started + (i / per_tick) * tick - time.monotonic()))

    def checker() -> None:
        while not stop.is_set() or pending:
            with lock:
                head = list(pending[:64])
            if not head:
                time.sleep(0.001)
                continue
            done = []
            for tag in head:  # loaders apply in log order: stop at the first one not yet visible
                if tag not in seen and all(visible(v, tag) for v in versions):
                    seen[tag] = time.monotonic()
                if tag not in seen_lexical and all(lexically_visible(v, tag) for v in versions):
                    seen_lexical[tag] = time.monotonic()
                if tag in seen and tag in seen_lexical:
                    done.append(tag)
                else:
                    break
            with lock:
                for tag in done:
                    pending.remove(tag)
            if not done:  # the checker's own searches share the cores with the queries it measures:
                time.sleep(CHECK_EVERY_S)  # poll at 200 Hz (a change's measured freshness: +5 ms at most)

    queries: list[float] = []
    q_stop = threading.Event()
    threads = [threading.Thread(target=publisher), threading.Thread(target=checker)]
    q_thread = threading.Thread(target=query_latencies, args=(dep, runtime, q_stop, queries))
    q_thread.start()
    threads[1].start()
    threads[0].start()
    threads[0].join()
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    q_stop.set()
    threads[1].join()
    q_thread.join()
    delays = [(seen[t] - published[t]) * 1000 for t in seen]
    lexical_delays = [(seen_lexical[t] - published[t]) * 1000 for t in seen_lexical]
    return {
        "rate": rate,
        "published": len(published),
        "never_visible": len(published) - len(seen),
        "never_visible_lexically": len(published) - len(seen_lexical),
        "freshness": percentiles(delays),
        "freshness_lexical": percentiles(lexical_delays),
        "query_during_ingest": percentiles(queries),
    }


def main() -> None:
    args, n, seconds, rates = freshness_arguments(__doc__)
    tmp = scratch_dir()
    registry, _ = two_version_registry(tmp / "registry", bench_config(index="hnsw"), export_onnx=True)

    with Deployment(tmp / "dep", registry) as dep:
        dep.seed_catalogue(synthetic_catalogue(n))
        dep.deploy("v0001")
        dep.deploy("v0002")  # both live: serving and standby

        idle: list[float] = []
        stop = threading.Event()
        t = threading.Thread(target=query_latencies, args=(dep, args.runtime, stop, idle))
        t.start()
        time.sleep(min(5.0, seconds))
        stop.set()
        t.join()

        # anchor: the direct in-process insert into one version, then the same search
        version = dep.versions["v0002"]
        direct = []
        for i in range(200):
            tag = f"direct-{i}"
            started = time.monotonic()
            version.apply([fresh_change(tag)])
            assert visible(version, tag)
            direct.append((time.monotonic() - started) * 1000)

        runs = [run_rate(dep, rate, seconds, args.runtime) for rate in rates]

    idle_p = percentiles(idle)
    for r in runs:
        r["query_p99_ratio"] = r["query_during_ingest"]["p99_ms"] / idle_p["p99_ms"]
        print(
            f"{r['rate']:>5}/s: freshness p50 {r['freshness']['p50_ms']:.1f} ms, p99 {r['freshness']['p99_ms']:.1f} ms"
            f" (lexical p99 {r['freshness_lexical']['p99_ms']:.1f} ms);"
            f" query p99 {r['query_during_ingest']['p99_ms']:.1f} ms ({r['query_p99_ratio']:.2f}x idle)"
        )
    anchor = percentiles(direct)
    print(
        f"direct insert: p50 {anchor['p50_ms']:.2f} ms, p99 {anchor['p99_ms']:.2f} ms; idle query p99 "
        f"{idle_p['p99_ms']:.1f} ms"
    )
    write_record(
        args.out,
        {
            "benchmark": "B6",
            "items": n,
            "seconds_per_rate": seconds,
            "live_versions": 2,
            "runtime": args.runtime,
            "idle_query": idle_p,
            "direct_insert": anchor,
            "rates": runs,
            "quick": args.quick,
        },
    )


if __name__ == "__main__":
    main()
