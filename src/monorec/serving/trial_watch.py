"""The serving side of a trial (see :mod:`monorec.deployment.trials`): both versions' answers measured per canvas,
the candidate scored off the request path in shadow mode, and the trial aborted when the candidate breaches
the environment's thresholds (``trial_max_error_rate``, ``trial_max_p99_ms``, ``trial_min_requests``)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from monorec.deployment.trials import Trial
from monorec.errors import DeployError
from monorec.serving.messages import RecommendResponse
from monorec.serving.trial_stats import TrialStats, overlap_at_k, rank_agreement

if TYPE_CHECKING:
    from monorec.serving.model_path import ModelPath

__all__ = ["TrialWatch"]

log = logging.getLogger(__name__)

SHADOW_QUEUE = 64  # shadow scorings waiting at most; beyond, a request is not shadowed (counted)


class TrialWatch:
    def __init__(self, model: ModelPath) -> None:
        self.model = model  # the path both versions' answers take
        self.stats = TrialStats()
        self.shadow_dropped = 0
        self._slots = threading.BoundedSemaphore(SHADOW_QUEUE)
        self._pool: ThreadPoolExecutor | None = None
        self._aborting = threading.Lock()

    def _current(self) -> Trial | None:
        """The running trial, its statistics reset when it is a new one."""
        trial = self.model.deployment.router.trial
        if trial is not None and self.stats.trial_key != (trial.version, trial.started):
            self.stats.reset((trial.version, trial.started))
        return trial

    def observe(self, work: Any, response: RecommendResponse) -> None:
        """Counts an answer of either version (cached and precomputed answers do not measure a model)."""
        trial = self._current()
        if trial is None or response.source in ("cache", "precomputed") or response.version is None:
            return
        reason = response.fallback.reason if response.fallback is not None else ""
        failed = response.source == "fallback"
        self.stats.observe(
            response.version,
            response.canvas,
            response.took_ms,
            error=failed and reason.startswith("error"),
            late=failed and reason == "deadline",
        )
        if response.version == trial.version:
            self._guard(trial)

    def shadow(self, work: Any, ranked: Any) -> None:
        """In shadow mode, scores the serving version's request with the candidate too, off the request path."""
        trial = self._current()
        if trial is None or trial.mode != "shadow" or work.candidate:
            return
        if not self._slots.acquire(blocking=False):
            self.shadow_dropped += 1
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="monorec-shadow")
        served = [i.entity_id for i in ranked.items]
        self._pool.submit(self._score_shadow, trial, work, served)

    def _score_shadow(self, trial: Trial, work: Any, served: list[str]) -> None:
        canvas = work.request.canvas
        started = time.monotonic()
        try:
            with self.model.deployment.router.pin(candidate=True) as version:
                if version.name != trial.version:
                    return  # the trial ended meanwhile
                result = self.model.rank(version, [work])[0]
            took_ms = (time.monotonic() - started) * 1000
            if isinstance(result, BaseException):
                self.stats.observe(trial.version, canvas, took_ms, error=True)
            else:
                self.stats.observe(trial.version, canvas, took_ms)
                self.stats.compare(canvas, served, [i.entity_id for i in result.items], work.request.k)
            self._guard(trial)
        except Exception as exc:  # a broken candidate must never reach the serving side
            self.stats.observe(trial.version, canvas, (time.monotonic() - started) * 1000, error=True)
            log.debug("shadow scoring by %s failed: %r", trial.version, exc)
            self._guard(trial)
        finally:
            self._slots.release()

    def _guard(self, trial: Trial) -> None:
        env = self.model.env
        reason = self.stats.breach(
            trial.version,
            max_error_rate=env.trial_max_error_rate,
            max_p99_ms=env.trial_max_p99_ms or env.latency_budget_ms,
            min_requests=env.trial_min_requests,
        )
        if reason is not None and self._aborting.acquire(blocking=False):
            # off the request path: an abort waits for the deployment's lifecycle lock
            threading.Thread(target=self._abort, args=(trial, reason), name="monorec-trial-abort", daemon=True).start()

    def _abort(self, trial: Trial, reason: str) -> None:
        try:
            # the owner's TrialController, or a replica's hand-off of the abort to its owner
            controller = getattr(self.model.deployment, "trials", None)
            if controller is None:
                log.warning("trial of %s breached (%s); nothing here can abort it", trial.version, reason)
            elif self.model.deployment.router.trial == trial:
                controller.abort(f"automatic: {reason}")
        except DeployError:
            pass  # ended meanwhile
        except Exception:  # the owner unreachable: the next breach tries again
            log.exception("trial of %s: the abort failed", trial.version)
        finally:
            self._aborting.release()

    def side_by_side(self, request: Any) -> dict[str, Any]:
        """One request answered by both versions of the running trial (the page's comparison): each side's
        entities, and their overlap@k and rank agreement.

        Raises:
            DeployError: no trial runs.
        """
        router = self.model.deployment.router
        trial = router.trial
        if trial is None:
            raise DeployError("no trial runs")
        sides: dict[str, Any] = {}
        for candidate in (False, True):
            with router.pin(candidate=candidate) as version:
                request_v = self.model.with_recent_history(request, version)
                work = self.model.validate(request_v, version)
                result = self.model.rank(version, [work])[0]
            if isinstance(result, BaseException):
                raise result
            sides["candidate" if candidate else "serving"] = {
                "version": version.name,
                "items": [i.model_dump() for i in result.items],
            }
        served = [i["entity_id"] for i in sides["serving"]["items"]]
        tried = [i["entity_id"] for i in sides["candidate"]["items"]]
        sides["overlap_at_k"] = overlap_at_k(served, tried, request.k)
        sides["rank_agreement"] = rank_agreement(served, tried)
        return sides

    def summary(self) -> dict[str, Any]:
        return {"canvases": self.stats.summary(), "shadow_dropped": self.shadow_dropped}

    def report(self) -> dict[str, Any]:
        """This process's side of the running trial, for the owner (a replica's report): the trial it
        measured (``[version, started]``, None before any) and :meth:`summary`."""
        key = self.stats.trial_key
        return {"trial": None if key is None else list(key), **self.summary()}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
