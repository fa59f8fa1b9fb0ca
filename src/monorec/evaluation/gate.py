"""The release gate: a candidate may not regress any canvas metric beyond a tolerance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GateResult", "compare_reports"]


@dataclass
class GateResult:
    passed: bool
    rows: list[dict[str, Any]] = field(default_factory=list)  # canvas, metric, candidate, baseline, delta, ok

    @property
    def regressions(self) -> list[str]:
        return [
            f"{r['canvas']} {r['metric']}: {r['candidate']:.4f} vs {r['baseline']:.4f} (delta {r['delta']:+.4f})"
            for r in self.rows
            if not r["ok"]
        ]


def compare_reports(
    candidate: dict[str, Any], baseline: dict[str, Any], *, tolerance: float, metrics: Sequence[str] | None = None
) -> GateResult:
    """Compares two evaluation reports canvas by canvas.

    Args:
        candidate, baseline: reports as written by ``evaluate_bundle`` (``{"k", "canvases": {...}}``).
        tolerance: the largest absolute drop allowed on any metric.
        metrics: the metrics compared (default: recall@k and ndcg@k).

    A canvas the baseline serves but the candidate does not is a regression.
    """
    k = baseline.get("k", 10)
    names = list(metrics or (f"recall@{k}", f"ndcg@{k}"))
    rows = []
    for canvas, base in baseline["canvases"].items():
        cand = candidate["canvases"].get(canvas)
        for metric in names:
            b = float(base[metric])
            c = float(cand[metric]) if cand is not None and metric in cand else float("nan")
            ok = c == c and c >= b - tolerance  # NaN (missing) fails
            rows.append({"canvas": canvas, "metric": metric, "candidate": c, "baseline": b, "delta": c - b, "ok": ok})
    return GateResult(all(r["ok"] for r in rows), rows)
