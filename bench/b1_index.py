"""B1: our vector index vs the bare libraries, at equal recall@10, on embedding-like vectors.

Data: N x 64 unit vectors drawn around 512 cluster centres (structured like two-tower embeddings; graph
indexes get poor recall on isotropic noise), 1,000 held-out queries from the same distribution; ground
truth by exact search. Compared, in one run:

- exact: ``FaissIndex(kind="exact")`` vs faiss ``IndexFlatIP``;
- HNSW (M=16, efConstruction=100): ``FaissIndex(kind="hnsw")`` vs faiss ``IndexHNSWFlat`` vs hnswlib.

For every HNSW index the efSearch sweep finds the cheapest setting with recall@10 >= 0.95; queries/s are
measured there, one query per call (the serving pattern) and in one batch. The ratio is ours over the best
bare library's single-query rate. Build time and bytes per vector (saved size) are reported too.

    python bench/b1_index.py --out b1.json [--sizes 100000 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_record
from monorec.index.base import EntityRows
from monorec.index.faiss_index import FaissIndex

DIM, K, TARGET = 64, 10, 0.95
EFS = (16, 24, 32, 48, 64, 96, 128, 192, 256)


def embedding_like(n: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def qps(search, queries: np.ndarray) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(single-query rate, batched rate) of ``search(batch) -> labels``."""
    for q in queries[:50]:  # warm-up
        search(q[None])
    started = time.perf_counter()
    for q in queries:
        search(q[None])
    single = len(queries) / (time.perf_counter() - started)
    started = time.perf_counter()
    search(queries)
    batched = len(queries) / (time.perf_counter() - started)
    return single, batched


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sweep(name: str, set_ef, search, queries: np.ndarray, truth: np.ndarray, timed=None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The cheapest efSearch reaching the target recall, and the rates there (of ``timed``, default
    ``search``: ours is timed returning entity ids, and mapped back to row numbers only for recall)."""
    curve = []
    for ef in EFS:
        set_ef(ef)
        r = recall(search(queries), truth)
        curve.append({"ef": ef, "recall": r})
        if r >= TARGET:
            single, batched = qps(timed or search, queries)
            return {"ef": ef, "recall": r, "qps_single": single, "qps_batched": batched, "curve": curve}
    raise RuntimeError(f"{name} never reached recall {TARGET}")


def run_size(n: int, seed: int, queries_n: int) -> dict[str, Any]:
    centres = np.random.default_rng(seed).normal(size=(512, DIM))
    data = embedding_like(n, seed + 1, centres)
    queries = embedding_like(queries_n, seed + 2, centres)
    ids = [f"e{i}" for i in range(n)]
    rows = EntityRows(ids, ["item"] * n, [()] * n, np.ones(n, dtype=np.int64), data)
    index_of = {e: i for i, e in enumerate(ids)}

    flat = faiss.IndexFlatIP(DIM)
    flat.add(data)
    _, truth = flat.search(queries, K)
    out: dict[str, Any] = {"n": n, "queries": queries_n}
    tmp = Path(tempfile.mkdtemp())

    def ours_labels(index: FaissIndex):  # type: ignore[no-untyped-def]
        def search(q: np.ndarray) -> np.ndarray:
            return np.vectorize(index_of.__getitem__, otypes=[np.int64])(index.search(q, K).ids)

        return search

    # ---- exact
    started = time.perf_counter()
    ours_exact = FaissIndex(DIM, kind="exact")
    ours_exact.upsert(rows)
    exact_build = time.perf_counter() - started
    assert recall(ours_labels(ours_exact)(queries), truth) == 1.0
    ours_single, ours_batched = qps(lambda q: ours_exact.search(q, K), queries[:200])
    bare_single, bare_batched = qps(lambda q: flat.search(q, K)[1], queries[:200])
    out["exact"] = {
        "ours": {"qps_single": ours_single, "qps_batched": ours_batched, "build_s": exact_build},
        "faiss_flat": {"qps_single": bare_single, "qps_batched": bare_batched},
        "ratio_single": ours_single / bare_single,
    }
    ours_exact.close()
    print(f"n={n} exact: ours {ours_single:.0f} q/s, faiss {bare_single:.0f} q/s")

    # ---- HNSW: ours, bare faiss, hnswlib (same M and efConstruction)
    started = time.perf_counter()
    ours = FaissIndex(DIM, kind="hnsw", hnsw_m=16, ef_construction=100)
    ours.upsert(rows)
    ours_build = time.perf_counter() - started
    ours.save(tmp / "ours")

    res_ours = sweep("ours", ours.set_ef_search, ours_labels(ours), queries, truth, lambda q: ours.search(q, K))
    res_ours.update(build_s=ours_build, bytes_per_vector=folder_bytes(tmp / "ours") / n)
    ours.close()
    print(f"n={n} hnsw ours: ef {res_ours['ef']} {res_ours['qps_single']:.0f} q/s, build {ours_build:.0f}s")

    started = time.perf_counter()
    bare = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
    bare.hnsw.efConstruction = 100
    bare.add(data)
    bare_build = time.perf_counter() - started
    faiss.write_index(bare, str(tmp / "bare.faiss"))

    def set_bare(ef: int) -> None:
        bare.hnsw.efSearch = ef

    res_bare = sweep("faiss", set_bare, lambda q: bare.search(q, K)[1], queries, truth)
    res_bare.update(build_s=bare_build, bytes_per_vector=(tmp / "bare.faiss").stat().st_size / n)
    bare.reset()  # frees the graph before the next library builds
    print(f"n={n} hnsw faiss: ef {res_bare['ef']} {res_bare['qps_single']:.0f} q/s, build {bare_build:.0f}s")

    out["hnsw"] = {"ours": res_ours, "faiss_hnsw": res_bare}
    try:
        import hnswlib

        started = time.perf_counter()
        lib = hnswlib.Index(space="ip", dim=DIM)
        lib.init_index(max_elements=n, M=16, ef_construction=100, random_seed=seed)
        lib.add_items(data, np.arange(n))
        lib_build = time.perf_counter() - started
        lib.save_index(str(tmp / "hnswlib.bin"))
        res_lib = sweep("hnswlib", lib.set_ef, lambda q: lib.knn_query(q, k=K)[0], queries, truth)
        res_lib.update(build_s=lib_build, bytes_per_vector=(tmp / "hnswlib.bin").stat().st_size / n)
        out["hnsw"]["hnswlib"] = res_lib
        print(f"n={n} hnswlib: ef {res_lib['ef']} {res_lib['qps_single']:.0f} q/s, build {lib_build:.0f}s")
    except ImportError:
        print("hnswlib not installed (pip install -e '.[bench]'); comparing with faiss only")
    best = max(v["qps_single"] for name, v in out["hnsw"].items() if name != "ours")
    out["hnsw"]["ratio_single"] = res_ours["qps_single"] / best
    out["hnsw"]["ratio_vs_faiss_single"] = res_ours["qps_single"] / res_bare["qps_single"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="10k vectors, 200 queries (checks the script runs)")
    args = ap.parse_args()
    sizes, queries = ([10_000], 200) if args.quick else (args.sizes, args.queries)
    started = time.perf_counter()
    results = [run_size(n, args.seed, queries) for n in sizes]
    record = {
        "benchmark": "B1",
        "dim": DIM,
        "k": K,
        "target_recall": TARGET,
        "faiss_threads": faiss.omp_get_max_threads(),
        "sizes": results,
        "quick": args.quick,
        "seconds": time.perf_counter() - started,
    }
    write_record(args.out, record)


if __name__ == "__main__":
    main()
