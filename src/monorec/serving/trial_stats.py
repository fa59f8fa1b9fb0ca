"""The online comparison of a trial's two versions, per canvas (see :mod:`monorec.deployment.trials`).

For every answer while a trial runs: the version that answered, its latency, whether the model path
failed (an ``error`` fallback) or was late (a ``deadline`` fallback). In shadow mode, for each request the
candidate also scored off the request path: the overlap@k and the rank correlation of its answer with the
serving version's, its latency and errors. :meth:`TrialStats.breach` says when the candidate crosses the
environment's thresholds, which aborts the trial.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TrialStats", "overlap_at_k", "rank_agreement"]

WINDOW = 2000  # latencies kept per (version, canvas) for the percentiles


@dataclass
class _Side:
    requests: int = 0
    errors: int = 0  # the model path failed (the answer came from a fallback)
    late: int = 0  # the model path missed the deadline (the answer came from a fallback)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        n = max(self.requests, 1)
        return {
            "requests": self.requests,
            "error_rate": self.errors / n,
            "late_rate": self.late / n,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
        }


@dataclass
class _Shadow:
    compared: int = 0
    overlap_sum: float = 0.0
    agreement_sum: float = 0.0
    agreement_n: int = 0


def overlap_at_k(a: Sequence[str], b: Sequence[str], k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / k."""
    return len(set(a[:k]) & set(b[:k])) / max(k, 1)


def rank_agreement(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Kendall's tau over the entities both lists hold (1: same order, -1: reversed); None below two."""
    common = [e for e in a if e in set(b)]
    if len(common) < 2:
        return None
    rank_b = {e: i for i, e in enumerate(b)}
    order = [rank_b[e] for e in common]  # b's ranks in a's order
    concordant = discordant = 0
    for i in range(len(order)):
        for j in range(i + 1, len(order)):
            if order[i] < order[j]:
                concordant += 1
            else:
                discordant += 1
    return (concordant - discordant) / (concordant + discordant)


class TrialStats:
    """What both versions of the running trial did, per canvas; reset when a trial starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.trial_key: tuple[str, float] | None = None  # (candidate, started): which trial these are of
        self._sides: dict[tuple[str, str], _Side] = {}
        self._shadow: dict[str, _Shadow] = {}

    def reset(self, trial_key: tuple[str, float]) -> None:
        with self._lock:
            self.trial_key, self._sides, self._shadow = trial_key, {}, {}

    def observe(self, version: str, canvas: str, took_ms: float, *, error: bool = False, late: bool = False) -> None:
        with self._lock:
            side = self._sides.setdefault((version, canvas), _Side())
            side.requests += 1
            side.errors += int(error)
            side.late += int(late)
            side.latencies_ms.append(took_ms)

    def compare(self, canvas: str, served: Sequence[str], candidate: Sequence[str], k: int) -> None:
        """A shadow comparison: the serving version's answer and the candidate's to the same request."""
        agreement = rank_agreement(served, candidate)
        with self._lock:
            shadow = self._shadow.setdefault(canvas, _Shadow())
            shadow.compared += 1
            shadow.overlap_sum += overlap_at_k(served, candidate, k)
            if agreement is not None:
                shadow.agreement_sum += agreement
                shadow.agreement_n += 1

    def summary(self) -> dict[str, Any]:
        """canvas -> {version -> requests, error_rate, late_rate, p50_ms, p99_ms; shadow comparison}."""
        out: dict[str, Any] = {}
        with self._lock:
            for (version, canvas), side in self._sides.items():
                out.setdefault(canvas, {}).setdefault("versions", {})[version] = side.summary()
            for canvas, s in self._shadow.items():
                out.setdefault(canvas, {})["shadow"] = {
                    "compared": s.compared,
                    "overlap_at_k": s.overlap_sum / max(s.compared, 1),
                    "rank_agreement": s.agreement_sum / s.agreement_n if s.agreement_n else None,
                }
        return out

    def breach(self, version: str, *, max_error_rate: float, max_p99_ms: float, min_requests: int) -> str | None:
        """Why ``version`` must leave the trial (its error rate or p99 latency over a canvas's threshold,
        once it answered ``min_requests`` there), or None."""
        with self._lock:
            for (name, canvas), side in self._sides.items():
                if name != version or side.requests < min_requests:
                    continue
                summary = side.summary()
                failed, p99, n = summary["error_rate"] + summary["late_rate"], summary["p99_ms"], side.requests
                if failed > max_error_rate:
                    return f"{canvas}: {failed:.1%} of {n} answers failed or were late (max {max_error_rate:.1%})"
                if max_p99_ms > 0 and p99 > max_p99_ms:
                    return f"{canvas}: p99 {p99:.1f} ms over {n} answers (max {max_p99_ms:.0f} ms)"
        return None
