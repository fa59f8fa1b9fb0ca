"""Readable reports: a markdown table per canvas and plots beside the JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monorec.artifacts import atomic_write, write_json
from monorec.evaluation.compare import paired_differences

__all__ = ["comparison_table", "differences_table", "write_report"]


def comparison_table(results: dict[str, dict[str, Any]], k: int) -> str:
    """results: model name -> report. Returns a markdown table, one row per (canvas, model)."""
    lines = [f"| canvas | model | recall@{k} | ndcg@{k} | requests |", "|---|---|---|---|---|"]
    canvases: list[str] = []
    for report in results.values():
        canvases += [c for c in report["canvases"] if c not in canvases]
    for canvas in canvases:
        for model, report in results.items():
            m = report["canvases"].get(canvas)
            if m is None:
                continue
            lines.append(
                f"| {canvas} | {model} | {m[f'recall@{k}']:.4f} | {m[f'ndcg@{k}']:.4f} | {m.get('requests', '')} |"
            )
    return "\n".join(lines)


def differences_table(differences: dict[str, dict[str, dict[str, dict[str, Any]]]], reference: str, k: int) -> str:
    """The paired differences of :func:`monorec.evaluation.compare.paired_differences` as markdown."""
    lines = [
        f"| canvas | {reference} minus | recall@{k} (95% CI) | ndcg@{k} (95% CI) | verdict (ndcg) |",
        "|---|---|---|---|---|",
    ]
    for model, canvases in differences.items():
        for canvas, d in canvases.items():
            r, n = d[f"recall@{k}"], d[f"ndcg@{k}"]
            lines.append(
                f"| {canvas} | {model} | {r['delta']:+.4f} [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] "
                f"| {n['delta']:+.4f} [{n['ci95'][0]:+.4f}, {n['ci95'][1]:+.4f}] | {n['verdict']} |"
            )
    return "\n".join(lines)


def _objective_table(report: dict[str, Any]) -> str:
    lines = ["| canvas | objective | AUC | log loss | RMSE | rows |", "|---|---|---|---|---|---|"]
    for canvas, m in report["canvases"].items():
        for name, o in m.get("objectives", {}).items():
            auc = f"{o['auc']:.4f}" if "auc" in o else ""
            ll = f"{o['logloss']:.4f}" if "logloss" in o else ""
            rmse = f"{o['rmse']:.4f}" if "rmse" in o else ""
            lines.append(f"| {canvas} | {name} | {auc} | {ll} | {rmse} | {o['rows']} |")
    return "\n".join(lines)


def _candidate_table(report: dict[str, Any]) -> str:
    """Per canvas: the share of relevant entities each candidate source (and their union) proposed."""
    names = sorted({n for m in report["canvases"].values() for n in m.get("candidate_recall", {})} - {"union"})
    lines = ["| canvas | " + " | ".join([*names, "union"]) + " |", "|---" * (len(names) + 2) + "|"]
    for canvas, m in report["canvases"].items():
        got = m.get("candidate_recall", {})
        cells = [f"{got[n]:.4f}" if n in got else "" for n in [*names, "union"]]
        lines.append(f"| {canvas} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    out: str | Path,
    report: dict[str, Any],
    *,
    comparisons: dict[str, dict[str, Any]] | None = None,
    history: list[dict[str, Any]] | None = None,
    title: str = "monorec evaluation",
    name: str = "model",
) -> Path:
    """Writes ``metrics.json``, ``report.md`` and PNG plots into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    k = report["k"]
    results = {name: report, **(comparisons or {})}
    differences = paired_differences(results, name, [f"recall@{k}", f"ndcg@{k}"]) if comparisons else {}
    write_json(out / "metrics.json", {**report, "comparisons": comparisons or {}, "differences": differences})
    md = [
        f"# {title}",
        "",
        f"Split: `{report['split']}`; Recall/NDCG over the full catalogue (retrieval then ranking).",
        "",
        comparison_table(results, k),
        "",
    ]
    if differences:
        md += [
            "## Paired differences",
            "",
            "Request by request on the same requests, with paired bootstrap 95% intervals "
            "(`not significant`: the interval includes 0).",
            "",
            differences_table(differences, name, k),
            "",
        ]
    if any(m.get("candidate_recall") for m in report["canvases"].values()):
        md += [
            "## Candidate sources",
            "",
            "Share of each request's relevant entities that each source proposed, and their union: what "
            "ranking can at best recover.",
            "",
            _candidate_table(report),
            "",
        ]
    md += [
        "## Objectives",
        "",
        _objective_table(report),
        "",
    ]
    canvases = list(report["canvases"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    width = 0.8 / len(results)
    for i, (name, rep) in enumerate(results.items()):
        for ax, metric in zip(axes, (f"recall@{k}", f"ndcg@{k}"), strict=True):
            values = [rep["canvases"].get(c, {}).get(metric, 0.0) for c in canvases]
            ax.bar([j + i * width for j in range(len(canvases))], values, width, label=name)
            ax.set_title(metric)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(canvases))], canvases)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(out / "canvases.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    md += ["![per-canvas metrics](canvases.png)", ""]
    if history:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot([h["epoch"] + 1 for h in history], [h["val_score"] for h in history], marker="o")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation score (ndcg@k, or -loss)")
        fig.tight_layout()
        with atomic_write(out / "training.png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        md += ["## Training", "", "![validation curve](training.png)", ""]
    with atomic_write(out / "report.md") as tmp:
        tmp.write_text("\n".join(md), encoding="utf-8")
    return out
