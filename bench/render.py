"""Renders benchmark JSON records as the markdown sections of docs/benchmarks.md.

python bench/render.py q1.json q2.json b7.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _env(r: dict[str, Any]) -> str:
    e = r["environment"]
    m = e["machine"]
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, {e['threads']} torch threads, Python {m['python']}, "
        f"torch {e['versions']['torch']}; git `{e['git_sha']}`, {e['date']}.  \nCommand: `python {e['command']}`"
    )


def q1(r: dict[str, Any]) -> str:
    k = r["k"]
    present = {m for row in r["canvases"].values() for m in row}
    order = [
        "consolidated",
        "separate",
        "popularity",
        "popularity_global",
        "category_popularity",
        "cooccurrence",
        "bm25",
    ]
    models = [m for m in order if m in present]
    lines = [
        "## Q1: consolidated vs separate (MovieLens latest-small, global time split 80/10/10)",
        "",
        _env(r),
        "",
        f"Recall@{k} / NDCG@{k} over the full catalogue (9,742 movies), retrieval then ranking; the same "
        "test requests for every model. `separate` = one dedicated model per canvas, same code, same rows.",
        "",
        "| canvas | " + " | ".join(models) + " | consolidated >= separate |",
        "|---|" + "---|" * (len(models) + 1),
    ]
    for canvas, row in r["canvases"].items():
        cells = [f"{row[m][f'recall@{k}']:.4f} / {row[m][f'ndcg@{k}']:.4f}" if m in row else "" for m in models]
        ge = r["consolidated_ge_separate"][canvas]
        verdict = "empty" if ge is None else ("yes" if ge else "**no**")
        lines.append(f"| {canvas} | " + " | ".join(cells) + f" | {verdict} |")
    differences = r.get("differences") or {}
    if differences:
        lines += [
            "",
            f"Consolidated minus each other model, request by request (paired bootstrap 95% interval), NDCG@{k}:",
            "",
            "| canvas | " + " | ".join(m for m in models if m != "consolidated") + " |",
            "|---|" + "---|" * (len(models) - 1),
        ]
        for canvas in r["canvases"]:
            cells = []
            for m in models:
                if m == "consolidated":
                    continue
                d = differences.get(m, {}).get(canvas, {}).get(f"ndcg@{k}")
                if d is None:
                    cells.append("")
                    continue
                mark = {"better": " better", "worse": " **worse**"}.get(d["verdict"], " n.s.")
                cells.append(f"{d['delta']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]{mark}")
            lines.append(f"| {canvas} | " + " | ".join(cells) + " |")
    lines += ["", f"Whole run (prepare, 5 trainings, evaluation): {r['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def q2(r: dict[str, Any]) -> str:
    lines = [
        "## Q2: multi-task bottoms on census-income (test file only, seeded 60/20/20 split)",
        "",
        _env(r),
        "",
        f"Mean ± std over {r['seeds']} seeds, {r['epochs']} epochs, best epoch by validation AUC. Not comparable "
        "with published tables (they train on the 199k-row training file, absent here).",
        "",
        "| model | income AUC | marital AUC | seconds |",
        "|---|---|---|---|",
    ]
    for name, s in r["summary"].items():
        lines.append(
            f"| {name} | {s['income_auc_mean']:.4f} ± {s['income_auc_std']:.4f} | "
            f"{s['marital_auc_mean']:.4f} ± {s['marital_auc_std']:.4f} | {s['seconds_mean']:.1f} |"
        )
    return "\n".join([*lines, ""])


def b7(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            "## B7: training throughput vs a bare PyTorch loop",
            "",
            _env(r),
            "",
            f"Synthetic world, {r['rows']:,} merged training rows, batch {r['batch_size']}, {r['epochs']} epochs, "
            f"best of {r['repeats']} interleaved repeats.",
            "",
            "| loop | samples/s |",
            "|---|---|",
            f"| monorec `TrainStep` | {r['best']['ours']:,.0f} |",
            f"| bare PyTorch loop, same model and losses | {r['best']['bare']:,.0f} |",
            f"| **ratio** (target >= 0.8) | **{r['ratio']:.3f}** |",
            "",
        ]
    )


def b1(r: dict[str, Any]) -> str:
    lines = [
        "## B1: vector index vs the bare libraries at equal recall@10",
        "",
        _env(r),
        "",
        f"{r['dim']}-d unit vectors around 512 centres, held-out queries, ground truth by exact search; "
        f"faiss on {r['faiss_threads']} OpenMP threads. HNSW M=16, efConstruction=100; each index at the "
        f"cheapest efSearch reaching recall@10 >= {r['target_recall']}; queries/s one query per call "
        "(the serving pattern) and batched.",
        "",
        "| N | index | efSearch | recall@10 | q/s single | q/s batched | build s | bytes/vector |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in r["sizes"]:
        n = f"{size['n']:,}"
        ex = size["exact"]
        lines.append(
            f"| {n} | monorec exact (faiss flat) | - | 1.000 | {ex['ours']['qps_single']:,.0f} | "
            f"{ex['ours']['qps_batched']:,.0f} | {ex['ours']['build_s']:.1f} | - |"
        )
        lines.append(
            f"| {n} | faiss IndexFlatIP | - | 1.000 | {ex['faiss_flat']['qps_single']:,.0f} | "
            f"{ex['faiss_flat']['qps_batched']:,.0f} | - | - |"
        )
        for name, label in (("ours", "monorec hnsw"), ("faiss_hnsw", "faiss IndexHNSWFlat"), ("hnswlib", "hnswlib")):
            h = size["hnsw"].get(name)
            if h is None:
                continue
            lines.append(
                f"| {n} | {label} | {h['ef']} | {h['recall']:.3f} | {h['qps_single']:,.0f} | "
                f"{h['qps_batched']:,.0f} | {h['build_s']:.1f} | {h['bytes_per_vector']:.0f} |"
            )
        lines.append(
            f"| {n} | **ratio** monorec / best bare (target >= 0.9) | | | exact {ex['ratio_single']:.2f}; hnsw "
            f"**{size['hnsw']['ratio_single']:.2f}** (vs faiss HNSW {size['hnsw']['ratio_vs_faiss_single']:.2f}) "
            "| | | |"
        )
    return "\n".join([*lines, ""])


def b5(r: dict[str, Any]) -> str:
    switches = ", ".join(f"{s['from']} -> {s['to']} in {s['switch_ms']:.0f} ms" for s in r["switches"])
    return "\n".join(
        [
            "## B5: version switches under load, with changes streaming",
            "",
            _env(r),
            "",
            f"{r['items']:,} entities, two live versions, {r['seconds']:.0f} s of open-loop requests at "
            f"{r['offered_rps']:.0f} req/s (70% of the measured {r['capacity_rps']:.0f} req/s; 60% home, 25% related, "
            f"15% search), 50 changes/s streaming, two switches ({switches}). In process, 4 request threads, torch and "
            "faiss single-threaded per request (the HTTP API comes with issue [3 of 3]).",
            "",
            "| failed | mismatched | stale after switch | p50 steady ms | p99 steady ms | p99 in switch windows ms "
            "| ratio |",
            "|---|---|---|---|---|---|---|",
            f"| {r['failed']} | {r['mismatched']} | {r['stale_after_switch']} | {r['p50_ms_steady']:.1f} | "
            f"{r['p99_ms_steady']:.1f} | {r['p99_ms_switch']:.1f} | {r['switch_p99_ratio']:.2f} (target <= 2) |",
            "",
        ]
    )


def b6(r: dict[str, Any]) -> str:
    lines = [
        "## B6: freshness, a change until search returns it in every live version",
        "",
        _env(r),
        "",
        f"{r['items']:,} entities, {r['live_versions']} live versions (serving + standby), embedded SQLite log, "
        f"{r['seconds_per_rate']:.0f} s per rate. Anchor: the direct in-process insert (embed + upsert + the "
        f"same search) p50 {r['direct_insert']['p50_ms']:.2f} ms, p99 {r['direct_insert']['p99_ms']:.2f} ms. "
        f"Idle query p99 {r['idle_query']['p99_ms']:.1f} ms.",
        "",
        "| changes/s | published | never visible | freshness p50 ms | freshness p99 ms (target <= 1000) | "
        "query p99 during ingest ms | vs idle (target <= 1.5) |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in r["rates"]:
        lines.append(
            f"| {x['rate']} | {x['published']} | {x['never_visible']} | {x['freshness']['p50_ms']:.1f} | "
            f"{x['freshness']['p99_ms']:.1f} | {x['query_during_ingest']['p99_ms']:.1f} | {x['query_p99_ratio']:.2f} |"
        )
    return "\n".join([*lines, ""])


def b9(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            "## B9: bulk re-embedding of the catalogue for a new version",
            "",
            _env(r),
            "",
            f"{r['items']:,} synthetic entities, batches of {r['batch']}. Ours: `Deployment.stage` end to end "
            "(catalogue pages, featurizing, item tower, exact index and item features, checkpoints, validation). "
            "Anchor: the item tower's forward alone on the same batches, featurized in advance.",
            "",
            "| path | items/s | seconds |",
            "|---|---|---|",
            f"| monorec bulk stage | {r['ours_items_per_s']:,.0f} | {r['ours_seconds']:.1f} |",
            f"| item tower forward alone | {r['anchor_items_per_s']:,.0f} | {r['anchor_seconds']:.1f} |",
            f"| featurize + forward (for the breakdown) | {r['featurize_forward_items_per_s']:,.0f} | |",
            f"| **ratio** (target >= 0.7) | **{r['ratio']:.3f}** | |",
            "",
        ]
    )


def _knobs(r: dict[str, Any]) -> str:
    k = r["environment_knobs"]
    return (
        f"Environment: {k['worker_threads']} worker threads, micro-batches of up to {k['max_batch']} "
        f"(max wait {k['max_wait_ms']:g} ms), retrieval depth {k['retrieval_depth']}, {r['index']} index, "
        f"deadline {k['latency_budget_ms']:g} ms (fallbacks counted), one torch and faiss thread per worker."
    )


def b3(r: dict[str, Any]) -> str:
    lines = [
        "## B3: `/v1/recommend` latency per canvas vs a bare FastAPI echo",
        "",
        _env(r),
        "",
        f"{r['items']:,} entities; {r['seconds_per_cell']:g} s per cell; load from a separate process on loopback "
        "(closed loop, keep-alive). Echo = FastAPI with the same request and response schema, same uvicorn "
        "settings (uvloop, httptools), same run. " + _knobs(r),
        "",
        "| canvas @ concurrency | ours p50 / p99 ms | echo p50 / p99 ms | ours - echo p99 ms | ours req/s "
        "| fallbacks |",
        "|---|---|---|---|---|---|",
    ]
    for cell, c in r["cells"].items():
        lines.append(
            f"| {cell} | {c['ours_p50_ms']:.1f} / {c['ours_p99_ms']:.1f} | {c['echo_p50_ms']:.2f} / "
            f"{c['echo_p99_ms']:.2f} | {c['p99_minus_echo_ms']:.1f} | {c['ours_rps']:.0f} | {c['fallbacks']} |"
        )
    verdict = "met" if r["met"] else "**missed**"
    lines += ["", f"Worst p99 {r['worst_p99_ms']:.1f} ms; target p99 <= {r['target_p99_ms']:g} ms: {verdict}.", ""]
    return "\n".join(lines)


def b4(r: dict[str, Any]) -> str:
    ms = r["ms"]
    verdict = "met" if r["met"] else "**missed**"
    return "\n".join(
        [
            "## B4: ranking 200 candidates, serving path vs the model called directly",
            "",
            _env(r),
            "",
            f"Median of {r['calls_per_round']} calls, best of {r['rounds']} interleaved rounds, {r['items']:,} "
            "entities, 200 explicit candidates per request (mixed canvases), top 10 answered; one torch thread.",
            "",
            "| path | ms per request | serving / this |",
            "|---|---|---|",
            f"| serving path (`ServingEngine.recommend`) | {ms['serving']:.2f} | 1.00x |",
            f"| ranker alone: context tower (1 row) + ranker (200 rows), ready tensors | {ms['ranker']:.2f} | "
            f"{r['ratio_vs_ranker']:.2f}x |",
            f"| `MonorecModel.forward` on 200 ready (context, entity) rows | {ms['forward']:.2f} | "
            f"{r['ratio_vs_forward']:.2f}x |",
            "",
            f"Target serving <= {r['target']}x the ranker alone: {verdict}.",
            "",
        ]
    )


def b8(r: dict[str, Any]) -> str:
    lines = [
        f"## B8: capacity at p99 <= {r['slo_p99_ms']:g} ms, mixed canvases",
        "",
        _env(r),
        "",
        f"{r['items']:,} entities; mix {r['mix']}; closed-loop connections from a separate process, "
        f"{r['seconds_per_level']:g} s per level. " + _knobs(r),
        "",
        "| concurrency | ours req/s | ours p50 / p99 ms | echo req/s | echo p50 / p99 ms |",
        "|---|---|---|---|---|",
    ]
    echo = {row["concurrency"]: row for row in r["echo"]["levels"]}
    for row in r["ours"]["levels"]:
        e = echo.get(row["concurrency"])
        tail = f"{e['rps']:.0f} | {e['p50']:.2f} / {e['p99']:.2f}" if e else "- | -"
        lines.append(f"| {row['concurrency']} | {row['rps']:.0f} | {row['p50']:.1f} / {row['p99']:.1f} | {tail} |")
    lines += [
        "",
        f"Capacity at the SLO: ours {r['ours']['capacity_rps']:.0f} req/s, echo {r['echo']['capacity_rps']:.0f} "
        f"req/s: ratio {r['ratio']:.3f}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    render = {"Q1": q1, "Q2": q2, "B7": b7, "B1": b1, "B5": b5, "B6": b6, "B9": b9, "B3": b3, "B4": b4, "B8": b8}
    for path in sys.argv[1:]:
        record = json.loads(Path(path).read_text())
        print(render[record["benchmark"]](record))


if __name__ == "__main__":
    main()
