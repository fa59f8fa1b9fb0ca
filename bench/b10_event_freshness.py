"""B10: event freshness — a user's event until that user's next answer reflects it.

A deployment serves the synthetic model (browse reads the user's history) with the feedback journal the
server uses. Click events of distinct users are recorded at 10, 100 and 1000 events/s as the events
endpoint records them: one durable journal transaction per call (at 100/s and above, the batch form, one
call per 10 ms tick), then each user's new state published on the change log. Meanwhile the user of the
newest recorded event waits until the users table (which the catalogue loader fills from the log) holds
the click as their history, and asks for their browse list, which the engine computes with that history.
Freshness: from the start of the events call until that answer returns. Then the time until the serving
version's user store holds the user's new home encoding (its loader re-encodes the state) is measured
from the same start. Meanwhile another thread measures browse latency for users who name their history
themselves; the same queries are measured idle first.

Anchor: the direct in-process history update, i.e. a request that carries the new history itself (no
journal write, no change log). Target: p99 <= 1 s.

    python bench/b10_event_freshness.py --out b10.json [--items 100000 --seconds 10] [--quick]
"""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import scratch_dir, write_record
from _serving import bench_config, freshness_arguments, synthetic_catalogue, two_version_registry
from b6_freshness import percentiles
from monorec.deployment import Deployment
from monorec.environments import EnvironmentSpec
from monorec.feedback import EventRecord, FeedbackJournal
from monorec.feedback.users import UserStates
from monorec.serving.engine import ServingEngine
from monorec.serving.messages import RecommendRequest
from monorec.stream.changes import UserChange


def browse(user: str, history: list[str] | None = None) -> RecommendRequest:
    context: dict[str, Any] = {"user_id": user, "category": "scifi"}
    if history is not None:
        context["history"] = history
    return RecommendRequest(canvas="browse", context=context, k=10)


def query_latencies(engine: ServingEngine, ids: list[str], stop: threading.Event, out: list[float]) -> None:
    """Browse requests at ~50/s from users who give their history (no journal read)."""
    rng = random.Random(0)
    while not stop.is_set():
        started = time.perf_counter()
        engine.recommend(browse(f"q{rng.randrange(400)}", [ids[rng.randrange(len(ids))]]))
        out.append((time.perf_counter() - started) * 1000)
        stop.wait(max(0.0, 0.02 - (time.perf_counter() - started)))


def run_rate(
    engine: ServingEngine, journal: FeedbackJournal, ids: list[str], rate: int, seconds: float
) -> dict[str, Any]:
    """Events recorded at ``rate`` by one thread (one call per event below 100/s, else one batch call per
    10 ms); another thread asks, as fast as answers come, for the user of the newest recorded event."""
    tick = 0.01 if rate >= 100 else 1.0 / rate
    per_tick = max(1, round(rate * tick))
    recorded: list[tuple[float, EventRecord, UserChange]] = []
    lock, done = threading.Lock(), threading.Event()
    delays: list[float] = []
    stored: list[float] = []  # until the serving version's user store holds the new state
    unreflected = 0
    states = UserStates(engine.deployment, journal)
    config = engine.deployment.registry.config("v0001")

    def record() -> None:
        rng = random.Random(rate)
        started, i = time.monotonic(), 0
        while time.monotonic() - started < seconds:
            users = [f"user{rate}-{i + j}" for j in range(per_tick)]
            now = time.time()
            batch = [
                EventRecord(f"e-{u}", None, u, "browse", ids[rng.randrange(len(ids))], "click", None, now)
                for u in users
            ]
            t0 = time.perf_counter()
            journal.record_events(batch)
            published = states.after_events(config, batch)
            with lock:
                recorded.append((t0, batch[-1], published[-1]))
            i += per_tick
            time.sleep(max(0.0, started + (i / per_tick) * tick - time.monotonic()))
        done.set()

    queries: list[float] = []
    stop = threading.Event()
    q_thread = threading.Thread(target=query_latencies, args=(engine, ids, stop, queries))
    recorder = threading.Thread(target=record)
    q_thread.start()
    started = time.monotonic()
    recorder.start()
    asked = 0
    while not (done.is_set() and asked == len(recorded)):
        with lock:
            newest = recorded[-1] if len(recorded) > asked else None
            asked = len(recorded)
        if newest is None:
            time.sleep(0.0005)
            continue
        t0, event, change = newest
        with engine.deployment.router.pin() as version:
            give_up = time.perf_counter() + 5.0
            while engine.model.with_recent_history(browse(event.user_id), version).context.get("history") != [
                event.entity_id
            ]:
                if time.perf_counter() > give_up:
                    unreflected += 1
                    break
                time.sleep(0.0005)
            engine.recommend(browse(event.user_id))  # the table never goes back: this answer has the click
            delays.append((time.perf_counter() - t0) * 1000)
            while not version.holds_user(event.user_id, change.revision) and time.perf_counter() < give_up:
                time.sleep(0.0005)
            stored.append((time.perf_counter() - t0) * 1000)
    recorder.join()
    elapsed = time.monotonic() - started
    stop.set()
    q_thread.join()
    return {
        "rate": rate,
        "events": len(recorded) * per_tick,
        "achieved_rate": len(recorded) * per_tick / elapsed,
        "answers_checked": len(delays),
        "not_reflected": unreflected,
        "freshness": percentiles(delays),
        "user_store_freshness": percentiles(stored),
        "query_during_events": percentiles(queries),
    }


def main() -> None:
    args, n, seconds, rates = freshness_arguments(__doc__)
    tmp = scratch_dir()
    config = bench_config(index="exact" if args.quick else "hnsw")
    registry, _ = two_version_registry(tmp / "registry", config, (0,), export_onnx=args.runtime == "onnx")
    catalogue = synthetic_catalogue(n)
    ids = catalogue["entity_id"].to_list()

    with Deployment(tmp / "dep", registry) as dep:
        dep.seed_catalogue(catalogue)
        dep.deploy("v0001")
        dep.open()  # the loaders run, as in the server: the catalogue's fills the users table from the log
        journal = FeedbackJournal(tmp / "dep" / "feedback.sqlite")
        env = EnvironmentSpec("bench", model_runtime=args.runtime)
        engine = ServingEngine(dep, env, journal=journal)
        try:
            idle: list[float] = []
            stop = threading.Event()
            t = threading.Thread(target=query_latencies, args=(engine, ids, stop, idle))
            t.start()
            time.sleep(min(5.0, seconds))
            stop.set()
            t.join()
            # anchor: the request carries the new history itself
            direct = []
            for i in range(200):
                t0 = time.perf_counter()
                engine.recommend(browse(f"direct{i}", [ids[i]]))
                direct.append((time.perf_counter() - t0) * 1000)
            runs = [run_rate(engine, journal, ids, rate, seconds) for rate in rates]
        finally:
            engine.close()
            journal.close()

    idle_p, anchor = percentiles(idle), percentiles(direct)
    for r in runs:
        r["query_p99_ratio"] = r["query_during_events"]["p99_ms"] / idle_p["p99_ms"]
        r["freshness_p99_vs_direct"] = r["freshness"]["p99_ms"] / anchor["p99_ms"]
        print(
            f"{r['rate']:>5}/s ({r['achieved_rate']:.0f}/s achieved): freshness p50 {r['freshness']['p50_ms']:.1f} ms,"
            f" p99 {r['freshness']['p99_ms']:.1f} ms ({r['freshness_p99_vs_direct']:.2f}x direct);"
            f" {r['not_reflected']} not reflected; query p99 {r['query_during_events']['p99_ms']:.1f} ms"
            f" ({r['query_p99_ratio']:.2f}x idle); user store p99 {r['user_store_freshness']['p99_ms']:.1f} ms"
        )
    print(f"direct (history in the request): p50 {anchor['p50_ms']:.2f} ms, p99 {anchor['p99_ms']:.2f} ms")
    write_record(
        args.out,
        {"benchmark": "B10", "items": n, "seconds": seconds, "idle_query": idle_p, "direct": anchor, "runs": runs},
    )


if __name__ == "__main__":
    main()
