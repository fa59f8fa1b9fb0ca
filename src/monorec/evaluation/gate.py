"""The release gate: a candidate may not significantly regress any canvas metric beyond a relative tolerance.

Both reports must come from the same requests (each canvas's ``requests_fingerprint``); the difference of
each metric is measured request by request with a paired bootstrap interval
(:mod:`monorec.evaluation.compare`). A metric fails when the candidate is significantly worse (the whole
interval below 0) AND the drop exceeds ``tolerance`` times the baseline's value: a significant but
negligible drop passes, and a drop the interval cannot tell from noise is reported "not significant"
rather than refused. A canvas the baseline serves but the candidate does not is a regression.

The gate makes m claims at once (every canvas x metric). Deciding each at 95% would refuse two equally
good models with a probability up to 1 - 0.95^m (34% for four canvases and two metrics), so the decision
reads the Bonferroni interval at level 1 - 0.05/m (family-wise error <= 5%); each row also keeps the
plain 95% interval that reports show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from monorec.evaluation.compare import compare_canvases

__all__ = ["GateResult", "compare_reports"]


@dataclass
class GateResult:
    passed: bool
    # canvas, metric, candidate, baseline, delta, ci95, ci_family (the interval decided on), level, verdict, ok
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def regressions(self) -> list[str]:
        return [
            f"{r['canvas']} {r['metric']}: {r['candidate']:.4f} vs {r['baseline']:.4f} (delta {r['delta']:+.4f}, "
            f"{r['level']:.2%} CI [{r['ci_family'][0]:+.4f}, {r['ci_family'][1]:+.4f}], {r['verdict']})"
            for r in self.rows
            if not r["ok"]
        ]


def compare_reports(
    candidate: dict[str, Any], baseline: dict[str, Any], *, tolerance: float, metrics: Sequence[str] | None = None
) -> GateResult:
    """Compares two evaluation reports canvas by canvas.

    Args:
        candidate, baseline: reports as written by ``evaluate_bundle`` (``{"k", "canvases": {...}}``), with
            per-request values.
        tolerance: the largest drop allowed, relative to the baseline's value (0.05: 5%), when significant.
        metrics: the metrics compared (default: recall@k and ndcg@k).

    Raises:
        NotComparable: the reports were measured on different requests (another split, data or sample),
            or one of them has no per-request values.
    """
    k = baseline.get("k", 10)
    names = list(metrics or (f"recall@{k}", f"ndcg@{k}"))
    plain = compare_canvases(candidate["canvases"], baseline["canvases"], names)
    claims = sum(len(m) for m in plain.values()) or 1
    level = 1 - 0.05 / claims
    differences = compare_canvases(candidate["canvases"], baseline["canvases"], names, level=level)
    rows = []
    for canvas, base in baseline["canvases"].items():
        if not base.get("requests"):
            continue  # nothing to compare on (an empty canvas in this data)
        cand = candidate["canvases"].get(canvas)
        for metric in names:
            b = float(base[metric])
            if cand is None or metric not in cand or canvas not in differences:
                nan2 = [float("nan")] * 2
                row = {"candidate": float("nan"), "delta": float("nan"), "ci95": nan2, "ci_family": nan2}
                row["level"] = level
                rows.append(
                    {"canvas": canvas, "metric": metric, "baseline": b, **row, "verdict": "missing", "ok": False}
                )
                continue
            diff = differences[canvas][metric]
            ok = not (diff.verdict == "worse" and -diff.mean > tolerance * b)
            rows.append(
                {
                    "canvas": canvas,
                    "metric": metric,
                    "candidate": float(cand[metric]),
                    "baseline": b,
                    "delta": diff.mean,
                    "ci95": [plain[canvas][metric].low, plain[canvas][metric].high],
                    "ci_family": [diff.low, diff.high],
                    "level": level,
                    "verdict": diff.verdict,
                    "ok": ok,
                }
            )
    return GateResult(all(r["ok"] for r in rows), rows)
