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
    models = ["consolidated", "separate", "popularity", "cooccurrence", "bm25"]
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
        verdict = "yes" if r["consolidated_ge_separate"][canvas] else "**no**"
        lines.append(f"| {canvas} | " + " | ".join(cells) + f" | {verdict} |")
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
    return "\n".join([
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
    ])


def main() -> None:
    render = {"Q1": q1, "Q2": q2, "B7": b7}
    for path in sys.argv[1:]:
        record = json.loads(Path(path).read_text())
        print(render[record["benchmark"]](record))


if __name__ == "__main__":
    main()
