"""B13: searches while an index compacts. A graph cannot drop a row, so a version's HNSW index keeps the
rows of overwritten and deleted entities dead and rebuilds itself from its live rows once more than
``compact_above`` (25%) of them are dead; rebuilding 100k rows takes ~12 s on one core. The measure is
what a search of the serving version waits meanwhile.

One thread searches the index every 5 ms (top 100, the serving pattern) while the writer overwrites
entities in batches of 50 (the streamed changes' shape) until a compaction has run. Anchor: the same
searches before any write, in the same run. Reported: search latency p50 / p99 / max during the writes
vs the anchor, and the compaction's own time.

    python bench/b13_compaction.py --out b13.json [--items 100000] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_record
from monorec.index.base import EntityRows
from monorec.index.faiss_index import FaissIndex

DIM, BATCH = 64, 50


def rows(vectors: np.ndarray, start: int, end: int, revision: int) -> EntityRows:
    n = end - start
    ids = [f"e{i}" for i in range(start, end)]
    return EntityRows(ids, ["movie"] * n, [("c",)] * n, np.full(n, revision, dtype=np.int64), vectors[start:end])


def searches(index: FaissIndex, queries: np.ndarray, stop: threading.Event, out: list[float]) -> None:
    i = 0
    while not stop.is_set():
        started = time.perf_counter()
        index.search(queries[i % len(queries)][None], 100)
        out.append((time.perf_counter() - started) * 1000)
        i += 1
        stop.wait(0.005)


def summary(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    p50, p99 = np.percentile(a, [50, 99])
    return {"n": len(a), "p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(a.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="5k entities (checks the script runs)")
    args = ap.parse_args()
    n = 5_000 if args.quick else args.items
    faiss.omp_set_num_threads(1)  # serving's setting: request-level parallelism, not intra-op
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = FaissIndex(DIM, kind="hnsw", hnsw_m=16, ef_construction=100)
    index.upsert(rows(vectors, 0, n, 1))
    queries = vectors[rng.choice(n, 256, replace=False)]

    def measured(work: Any) -> list[float]:
        out: list[float] = []
        stop = threading.Event()
        thread = threading.Thread(target=searches, args=(index, queries, stop, out))
        thread.start()
        try:
            work()
        finally:
            stop.set()
            thread.join()
        return out

    idle = measured(lambda: time.sleep(3.0 if args.quick else 5.0))
    batches: list[float] = []

    def overwrite() -> None:
        for start in range(0, n, BATCH):
            before = index._count()  # rows stored, dead ones included
            t = time.perf_counter()
            index.upsert(rows(vectors, start, min(n, start + BATCH), 2), write_chunk=32)
            batches.append(time.perf_counter() - t)
            if index._count() < before:  # rebuilt from the live rows
                return
        raise RuntimeError("no compaction ran")

    during = measured(overwrite)
    record = {
        "benchmark": "B13",
        "items": n,
        "idle": summary(idle),
        "during_writes_and_compaction": summary(during),
        "compaction_s": max(batches),
        "quick": args.quick,
    }
    record["max_ratio"] = record["during_writes_and_compaction"]["max_ms"] / record["idle"]["max_ms"]
    for name in ("idle", "during_writes_and_compaction"):
        s = record[name]
        print(f"{name}: {s['n']} searches, p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms", end="")
        print(f", max {s['max_ms']:.1f} ms")
    print(f"compaction (the batch that ran it): {record['compaction_s']:.2f} s")
    write_record(args.out, record)


if __name__ == "__main__":
    main()
