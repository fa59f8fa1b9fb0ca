"""Comparing two recommenders on the SAME requests: paired bootstrap confidence intervals.

Per-request metrics of two models on one request set are paired (request r is the same user, context and
targets for both), so the difference is measured request by request and the requests are resampled with
replacement: the 2.5th and 97.5th percentiles of the resampled mean differences are the 95% interval. A
difference whose interval excludes 0 is significant; otherwise the honest answer is "not significant".

Reports carry what makes them comparable: each canvas's request-set fingerprint (contexts, targets and
exclusions) beside the per-request values. Comparing reports whose fingerprints differ is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from monorec.errors import MonorecError

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "Difference",
    "NotComparable",
    "average_over_runs",
    "compare_canvases",
    "paired_bootstrap",
    "paired_differences",
    "request_fingerprint",
]

BOOTSTRAP_SAMPLES = 2000

Verdict = Literal["better", "worse", "not significant"]


class NotComparable(MonorecError):
    """Two reports were not measured on the same requests (or one lacks per-request values)."""


@dataclass(frozen=True)
class Difference:
    """candidate - baseline on one metric: the mean, its paired-bootstrap 95% interval, the verdict."""

    mean: float
    low: float
    high: float
    requests: int

    @property
    def verdict(self) -> Verdict:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "not significant"

    def to_dict(self) -> dict[str, Any]:
        return {
            "delta": self.mean,
            "ci95": [self.low, self.high],
            "verdict": self.verdict,
            "requests": self.requests,
        }


def paired_bootstrap(
    candidate: np.ndarray,
    baseline: np.ndarray,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> Difference:
    """The mean of ``candidate - baseline`` (R,) per-request values and its paired bootstrap interval at
    ``level`` (95% by default; ``samples`` resamplings of the R requests with replacement, seeded).

    Raises:
        ValueError: the arrays are not of the same length.
    """
    a, b = np.asarray(candidate, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two (R,) arrays of the same length, got {a.shape} and {b.shape}")
    diff = a - b
    if len(diff) == 0:
        return Difference(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = np.empty(samples, dtype=np.float64)
    chunk = max(1, 4_000_000 // len(diff))  # bounded memory: (chunk, R) indices at a time
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        means[start : start + n] = diff[rng.integers(0, len(diff), (n, len(diff)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return Difference(float(diff.mean()), float(low), float(high), len(diff))


def average_over_runs(reports: list[dict[str, Any]], metrics: list[str]) -> dict[str, Any]:
    """One report from several runs of the same model kind on the same requests (training seeds): each
    request's value of each metric averaged over the runs, and the canvas means recomputed from them.

    A single training run's answer differs from the next seed's by more than the request sampling that a
    paired bootstrap measures (the demo's synthetic world: search's Q1 verdict against BM25 flips between
    seeds); comparing run averages removes most of that variance from both sides of a difference. The
    first run's other fields (fusion weights, objectives) are kept; ``per_run`` holds each run's means.

    Raises:
        NotComparable: the runs evaluated a canvas on different requests.
    """
    first = reports[0]
    out = {**first, "canvases": {}, "runs": len(reports)}
    for canvas, entry in first["canvases"].items():
        runs = [r["canvases"].get(canvas, {}) for r in reports]
        if not entry.get("requests") or "per_request" not in entry:
            out["canvases"][canvas] = entry
            continue
        if len({r.get("requests_fingerprint") for r in runs}) != 1:
            raise NotComparable(f"{canvas}: the runs were evaluated on different requests")
        per_request = dict(entry["per_request"])
        merged = {**entry, "per_run": [{m: r[m] for m in metrics} for r in runs]}
        for m in metrics:
            values = np.mean([np.asarray(r["per_request"][m], dtype=np.float64) for r in runs], axis=0)
            per_request[m] = [round(float(x), 6) for x in values]
            merged[m] = float(values.mean())
        if "cold" in per_request:  # the cold-start and warm slices, of the averages too
            cold = np.asarray(per_request["cold"], dtype=bool)
            for name, mask in (("cold", cold), ("warm", ~cold)):
                some = bool(mask.any())
                means = {m: float(np.asarray(per_request[m])[mask].mean()) if some else float("nan") for m in metrics}
                merged[name] = {**means, "requests": int(mask.sum())}
        merged["per_request"] = per_request
        out["canvases"][canvas] = merged
    return out


def request_fingerprint(contexts_csv: bytes, relevant: list[np.ndarray], exclude: list[np.ndarray]) -> str:
    """A short hash of a request set: its contexts (as CSV bytes) in order, and each request's targets and
    exclusions (as sets)."""
    digest = hashlib.sha256(contexts_csv)
    for rows in (relevant, exclude):
        for r in rows:
            digest.update(np.sort(np.asarray(r, dtype=np.int64)).tobytes())  # a set: order carries nothing
            digest.update(b"|")
    return digest.hexdigest()[:16]


def compare_canvases(
    candidate: dict[str, Any], baseline: dict[str, Any], metrics: list[str], *, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, Difference]]:
    """canvas -> metric -> paired difference, for every canvas both reports evaluated.

    Args:
        candidate, baseline: per-canvas entries of two reports (``report["canvases"]``), each with
            ``per_request`` values and a ``requests_fingerprint``.

    Raises:
        NotComparable: a canvas was evaluated on other requests, or lacks per-request values.
    """
    out: dict[str, dict[str, Difference]] = {}
    for canvas, base in baseline.items():
        cand = candidate.get(canvas)
        if cand is None or not base.get("requests"):
            continue
        if "per_request" not in cand or "per_request" not in base:
            raise NotComparable(f"{canvas}: a report has no per-request values (evaluated before they were kept)")
        if cand.get("requests_fingerprint") != base.get("requests_fingerprint"):
            raise NotComparable(
                f"{canvas}: evaluated on different requests (fingerprints {cand.get('requests_fingerprint')} "
                f"and {base.get('requests_fingerprint')}): another split, data or request sample"
            )
        out[canvas] = {
            m: paired_bootstrap(
                np.asarray(cand["per_request"][m]), np.asarray(base["per_request"][m]), seed=seed, level=level
            )
            for m in metrics
        }
    return out


def paired_differences(
    results: dict[str, dict[str, Any]], reference: str, metrics: list[str], *, seed: int = 0
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``reference`` minus every other model of ``results`` (model name -> report), per canvas both
    evaluated on the same requests: model -> canvas -> metric -> {"delta", "ci95", "verdict", "requests"}.
    Canvases evaluated on other requests (or without per-request values) are left out."""
    ref = results[reference]["canvases"]
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for name, report in results.items():
        if name == reference:
            continue
        for canvas, other in report["canvases"].items():
            mine = ref.get(canvas)
            if mine is None or not other.get("requests"):
                continue
            try:
                diffs = compare_canvases({canvas: mine}, {canvas: other}, metrics, seed=seed)[canvas]
            except NotComparable:
                continue
            out.setdefault(name, {})[canvas] = {m: d.to_dict() for m, d in diffs.items()}
    return out
