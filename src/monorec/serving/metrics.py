"""Prometheus metrics of one serving process: request latency per canvas, answers by source, fallbacks by
reason, and, read at scrape time from the deployment, the live versions and each consumer's stream lag.

Each app gets its own :class:`~prometheus_client.CollectorRegistry` (several apps in one process, as in
tests, never collide).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monorec.deployment.served import ServedDeployment
from monorec.serving.messages import RecommendResponse
from monorec.stage_times import StageTimes

__all__ = ["ServingMetrics"]

RECENT = 500  # latest answers per canvas behind the page's latency figures
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)


class _DeploymentCollector(Collector):
    def __init__(self, deployment: ServedDeployment) -> None:
        self.deployment = deployment

    def collect(self) -> Iterator[Metric]:
        live = GaugeMetricFamily(
            "monorec_version_live", "1 for each deployed version, by state", labels=["version", "state"]
        )
        lag = GaugeMetricFamily(
            "monorec_stream_lag", "change-log entries not yet applied, per consumer", labels=["consumer"]
        )
        healthy = GaugeMetricFamily(
            "monorec_loader_healthy",
            "1 while a consumer's loader applies the log, 0 when it fails",
            labels=["consumer"],
        )
        checkpoint_age = GaugeMetricFamily(
            "monorec_checkpoint_age_seconds",
            "seconds since a consumer's offset last committed with its checkpoint (what a restart replays)",
            labels=["consumer"],
        )
        dead = GaugeMetricFamily("monorec_dead_letters", "changes no consumer could apply (dead letters)")
        skipped = CounterMetricFamily(
            "monorec_sources_skipped",
            "times a candidate source failed or missed its timeout and requests went on without it",
            labels=["version", "source"],
        )
        users = GaugeMetricFamily(
            "monorec_user_store_rows", "stored user encodings (user x user canvas) per live version", labels=["version"]
        )
        for name, version in list(self.deployment.versions.items()):
            for source, count in version.skipped_sources.items():
                skipped.add_metric([name, source], float(count))
            if version.users is not None:
                with contextlib.suppress(Exception):  # a Redis store away must not break the scrape
                    users.add_metric([name], float(len(version.users)))
        for row in self.deployment.status():
            if row["state"] in ("serving", "standby", "staging", "ready"):
                live.add_metric([row["version"], row["state"]], 1.0)
        with contextlib.suppress(Exception):  # a broker away must not break the scrape: these are then absent
            status = self.deployment.stream_status()
            for group, entries in status["lag"].items():
                lag.add_metric([group], float(entries))
            for group, health in status["loaders"].items():
                healthy.add_metric([group], 1.0 if health["healthy"] else 0.0)
                if "checkpoint_age_s" in health:
                    checkpoint_age.add_metric([group], float(health["checkpoint_age_s"]))
            dead.add_metric([], float(status["dead_letters"]))
        yield live
        yield lag
        yield healthy
        yield checkpoint_age
        yield dead
        yield skipped
        yield users


class _TrialCollector(Collector):
    """The running trial's comparison per canvas (see :mod:`monorec.serving.trial_watch`), read at scrape time."""

    def __init__(self, summary: Callable[[], dict[str, Any]]) -> None:
        self.summary = summary

    def collect(self) -> Iterator[Metric]:
        labels = ["version", "canvas"]
        answers = GaugeMetricFamily("monorec_trial_answers", "answers per version during the trial", labels=labels)
        failed = GaugeMetricFamily(
            "monorec_trial_failed_ratio", "share of a version's answers that failed or were late", labels=labels
        )
        p99 = GaugeMetricFamily("monorec_trial_p99_seconds", "a version's p99 latency during the trial", labels=labels)
        overlap = GaugeMetricFamily(
            "monorec_trial_overlap", "shadow: mean overlap@k of the two answers", labels=["canvas"]
        )
        agreement = GaugeMetricFamily(
            "monorec_trial_rank_agreement", "shadow: mean Kendall tau of the two answers", labels=["canvas"]
        )
        for canvas, c in self.summary().get("canvases", {}).items():
            for version, m in c.get("versions", {}).items():
                answers.add_metric([version, canvas], float(m["requests"]))
                failed.add_metric([version, canvas], float(m["error_rate"] + m["late_rate"]))
                p99.add_metric([version, canvas], float(m["p99_ms"]) / 1000)
            shadow = c.get("shadow")
            if shadow is not None:
                overlap.add_metric([canvas], float(shadow["overlap_at_k"]))
                if shadow["rank_agreement"] is not None:
                    agreement.add_metric([canvas], float(shadow["rank_agreement"]))
        yield from (answers, failed, p99, overlap, agreement)


class _StageCollector(Collector):
    """The model path's time per stage (see :mod:`monorec.stage_times`), read at scrape time."""

    def __init__(self, stages: StageTimes) -> None:
        self.stages = stages

    def collect(self) -> Iterator[Metric]:
        seconds = CounterMetricFamily(
            "monorec_model_path_seconds", "wall time spent in each stage of the model path", labels=["stage"]
        )
        calls = CounterMetricFamily(
            "monorec_model_path_calls", "times each stage ran (once per micro-batch or request)", labels=["stage"]
        )
        for stage, (n, total) in self.stages.snapshot().items():
            seconds.add_metric([stage], total)
            calls.add_metric([stage], float(n))
        yield from (seconds, calls)


class ServingMetrics:
    def __init__(self, deployment: ServedDeployment) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "monorec_request_seconds",
            "time to answer a recommend request, by canvas",
            ["canvas"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.answers = Counter(
            "monorec_answers",
            "answers by canvas and source (model, cache, precomputed, fallback)",
            ["canvas", "source"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "monorec_fallbacks", "fallback answers by canvas and reason", ["canvas", "reason"], registry=self.registry
        )
        self.errors = Counter(
            "monorec_request_errors", "requests refused or failed, by HTTP status", ["status"], registry=self.registry
        )
        self.events = Counter(
            "monorec_events",
            "user events by kind and outcome (received, unknown_entity, unknown_canvas; duplicate under kind any)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.registry.register(_DeploymentCollector(deployment))
        self._recent: dict[str, deque[float]] = {}  # canvas -> the latest latencies (ms), for the page

    def observe(self, response: RecommendResponse) -> None:
        self.latency.labels(response.canvas).observe(response.took_ms / 1000)
        self._recent.setdefault(response.canvas, deque(maxlen=RECENT)).append(response.took_ms)
        self.answers.labels(response.canvas, response.source).inc()
        if response.fallback is not None:
            reason = response.fallback.reason.split(":")[0]  # "error: X" -> "error" (bounded label values)
            self.fallbacks.labels(response.canvas, reason).inc()

    def watch_trials(self, summary: Callable[[], dict[str, Any]]) -> None:
        """Exports the running trial's comparison (``summary``: the engine's trial watch) at each scrape."""
        self.registry.register(_TrialCollector(summary))

    def watch_stages(self, stages: StageTimes) -> None:
        """Exports the model path's time per stage (the engine's :class:`StageTimes`) at each scrape."""
        self.registry.register(_StageCollector(stages))

    def recent_latency(self) -> dict[str, dict[str, float]]:
        """canvas -> p50 / p99 (ms) and count of its latest answers (at most 500): what the page charts."""
        out = {}
        for canvas, window in list(self._recent.items()):
            values = np.array(window)
            if values.size:
                p50, p99 = np.percentile(values, [50, 99])
                out[canvas] = {"p50_ms": float(p50), "p99_ms": float(p99), "answers": int(values.size)}
        return out

    def render(self) -> bytes:
        return generate_latest(self.registry)
