"""The serving engine: one canvas-agnostic request path over a deployment, without any web framework.

``recommend(request)``:

1. validate + impute: the canvas must be served by the environment, k and explicit candidates within its
   limits, the context normalized to the unified record (unknown ids are cold start, not errors);
2. answer cache (``cache_ttl_s``) and precomputed tables (``mode = "precomputed"``), when they hold an
   answer of the serving version;
3. the model path on a worker (micro-batched with concurrent requests): pin ONE version -> retrieve
   (context embedding -> that version's index, filtered by entity type / category) or take the explicit
   candidates -> rank them together (whatever their entity types) -> business rules -> the best k, with
   every objective's prediction;
4. the caller waits until the deadline at most; a miss or a failure is answered by the fallback (popular
   for this canvas / category / country, or the last good answer to the same request), and says so.

The HTTP layer (:mod:`monorec.serving.app`) is a thin shell over this class.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from monorec.deployment.served import ServedDeployment
from monorec.deployment.version import ServingVersion
from monorec.environments import EnvironmentSpec
from monorec.errors import CanvasNotServed, RequestError, ServingUnavailable
from monorec.feedback.journal import AnswerRecord, FeedbackJournal
from monorec.serving.answers import popular_answer
from monorec.serving.batcher import Job, MicroBatcher
from monorec.serving.cache import LruCache
from monorec.serving.messages import FallbackInfo, RecommendRequest, RecommendResponse
from monorec.serving.model_path import ModelPath, Ranked, Work
from monorec.serving.precomputed import PrecomputedTables
from monorec.serving.trial_watch import TrialWatch

__all__ = ["ServingEngine", "request_key"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Started:
    """A request after validation: answered already (cache, precomputed) or waiting on the model path."""

    work: Work
    key: str
    start: float
    version: ServingVersion
    ready: RecommendResponse | None
    future: Future[Any] | None = None
    deadline: float = 0.0


class ServingEngine:
    """Answers :class:`RecommendRequest` s over a deployment (the owner or a replica) with one environment's knobs."""

    def __init__(
        self, deployment: ServedDeployment, env: EnvironmentSpec, *, journal: FeedbackJournal | None = None
    ) -> None:
        self.deployment = deployment
        self.env = env
        self.journal = journal  # every answer's context and entities, for the loop back to training
        # answers are cached as (version, JSON bytes): two objects per entry where a live answer is hundreds,
        # which the garbage collector would walk on every full collection (measured: 40 ms pauses)
        self._cache: LruCache[tuple[str, bytes]] | None = (
            LruCache(env.cache_size, env.cache_ttl_s) if env.cache_ttl_s > 0 else None
        )
        self._last_good: LruCache[tuple[str, bytes]] = LruCache(env.cache_size)
        self._batcher: MicroBatcher[Work] = MicroBatcher(
            self._run_batch, workers=env.worker_threads, max_batch=env.max_batch, max_wait_s=env.max_wait_ms / 1000
        )
        self.model = ModelPath(deployment, env)  # validation, retrieval and ranking (no deadlines)
        self.trials = TrialWatch(self.model)  # measures both sides of a canary or shadow trial, aborts a bad one
        self.precomputed: PrecomputedTables | None = None
        if env.mode == "precomputed":
            self.precomputed = PrecomputedTables(self.model)
        self._closed = threading.Event()
        # answers' request ids: 20 random hex digits for this engine, then a counter (32 in all, like a uuid4's
        # hex): unique across engines and processes, without a uuid4's read of the OS's randomness per
        # answer, which under load took a tenth of the event loop's time
        self._id_prefix = uuid.uuid4().hex[:20]
        self._ids = itertools.count()

    # ------------------------------------------------------------------------------------ requests

    def recommend(self, request: RecommendRequest) -> RecommendResponse:
        """One answer, within the request's deadline (plus the fallback's own ~1 ms).

        Raises:
            RequestError: the request does not fit the schema or the environment's limits (field named).
            CanvasNotServed: the environment does not serve the canvas.
            ServingUnavailable: no version is serving, or the model failed and the fallback is ``none``.
        """
        started = self._start_request(request)
        return self._issue(started, self._finish_request(started))

    def recommend_many(self, requests: Sequence[RecommendRequest]) -> list[RecommendResponse]:
        """Several answers at once: all are validated first (a bad one fails the call, its position named),
        then submitted together, so the workers can batch them; each keeps its own deadline."""
        return [self._issue(s, self._finish_request(s)) for s in self._start_many(requests)]

    def _start_many(self, requests: Sequence[RecommendRequest]) -> list[_Started]:
        if len(requests) > self.env.max_batch_requests:
            limit = self.env.max_batch_requests
            raise RequestError("requests", f"{len(requests)} requests exceed the limit of {limit}")
        started = []
        for i, request in enumerate(requests):
            try:
                started.append(self._start_request(request))
            except CanvasNotServed:
                raise
            except RequestError as exc:  # the same error, named by its position in the batch
                raise RequestError(f"requests.{i}.{exc.field}", exc.reason) from None
        return started

    def _start_request(self, request: RecommendRequest) -> _Started:
        start = time.monotonic()
        refused = self.deployment.fenced()
        if refused is not None:
            raise ServingUnavailable(refused)
        router = self.deployment.router
        version = router.current
        if version is None:
            raise ServingUnavailable("no version is serving yet; deploy one first")
        trial = router.trial
        candidate = trial is not None and trial.takes(request.context)
        if candidate:  # a canary request: everything below reads the candidate version
            version = router.trial_version or version
        with self.model.stages.stage("validate"):
            request = self.model.with_recent_history(request, version)
            work = dataclasses.replace(self.model.validate(request, version), candidate=candidate)
            key = request_key(request)  # with the history filled in: a new event makes it a new request
        if self._cache is not None:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == version.name:
                cached = RecommendResponse.model_validate_json(hit[1]).model_copy(update={"source": "cache"})
                return _Started(work, key, start, version, cached)
        if self.precomputed is not None:
            items = self.precomputed.answer(work, version.name)
            if items is not None:
                ready = RecommendResponse(
                    canvas=request.canvas, version=version.name, items=items, took_ms=0.0, source="precomputed"
                )
                return _Started(work, key, start, version, ready)
        deadline = start + self._budget_s(request)
        return _Started(work, key, start, version, None, self._batcher.submit(work, deadline), deadline)

    def _finish_request(self, started: _Started) -> RecommendResponse:
        if started.ready is not None:
            return started.ready.model_copy(update={"took_ms": _ms_since(started.start)})
        assert started.future is not None
        try:
            ranked: Ranked = started.future.result(timeout=max(0.0, started.deadline - time.monotonic()))
        except (FutureTimeout, TimeoutError):
            started.future.cancel()
            return self._fallback(started, "deadline")
        except RequestError:
            raise
        except Exception as exc:  # the model path failed: the request still gets an answer
            return self._failed(started, exc)
        return self._answered(started, ranked)

    async def recommend_async(self, request: RecommendRequest) -> RecommendResponse:
        """:meth:`recommend` for an event loop: the caller awaits the worker instead of blocking a thread."""
        started = self._start_request(request)
        return self._issue(started, await self._finish_async(started))

    async def recommend_many_async(self, requests: Sequence[RecommendRequest]) -> list[RecommendResponse]:
        """:meth:`recommend_many` for an event loop."""
        return [self._issue(s, await self._finish_async(s)) for s in self._start_many(requests)]

    def _issue(self, started: _Started, response: RecommendResponse) -> RecommendResponse:
        """The answer with its own request id (a cached answer gets a new one: it is another request),
        journaled with the context the model saw when the engine has a feedback journal."""
        request_id = f"{self._id_prefix}{next(self._ids):012x}"
        response = response.model_copy(update={"request_id": request_id})
        if self.deployment.router.trial is not None:
            self.trials.observe(started.work, response)
        if self.journal is not None:
            context = {k: v for k, v in started.work.record.items() if k != "task_type" and v is not None}
            items = [item.entity_id for item in response.items]
            self.journal.record_answer(
                AnswerRecord(request_id, time.time(), response.canvas, response.version, context, items)
            )
        return response

    async def _finish_async(self, started: _Started) -> RecommendResponse:
        if started.ready is not None:
            return started.ready.model_copy(update={"took_ms": _ms_since(started.start)})
        assert started.future is not None
        try:  # a timeout cancels the wrapped future, so a job still queued is dropped
            ranked: Ranked = await asyncio.wait_for(
                asyncio.wrap_future(started.future), timeout=max(0.0, started.deadline - time.monotonic())
            )
        except TimeoutError:
            return self._fallback(started, "deadline")
        except RequestError:
            raise
        except Exception as exc:
            return self._failed(started, exc)
        return self._answered(started, ranked)

    def _failed(self, started: _Started, exc: Exception) -> RecommendResponse:
        log.warning("model path failed, the fallback answers: %r", exc)
        return self._fallback(started, f"error: {type(exc).__name__}")

    def _answered(self, started: _Started, ranked: Ranked) -> RecommendResponse:
        with self.model.stages.stage("answer"):
            return self._answer(started, ranked)

    def _answer(self, started: _Started, ranked: Ranked) -> RecommendResponse:
        self.trials.shadow(started.work, ranked)
        response = RecommendResponse(
            canvas=started.work.request.canvas,
            version=ranked.version,
            items=ranked.items,
            took_ms=_ms_since(started.start),
            source="model",
            unknown_candidates=ranked.unknown,
            sources=ranked.sources,
        )
        stored = (ranked.version, response.__pydantic_serializer__.to_json(response))
        self._last_good.put(started.key, stored)
        if self._cache is not None:
            self._cache.put(started.key, stored)
        return response

    def _budget_s(self, request: RecommendRequest) -> float:
        budget = self.env.latency_budget_ms
        return (min(budget, request.timeout_ms) if request.timeout_ms else budget) / 1000

    # ---------------------------------------------------------------------------------- model path

    def _run_batch(self, jobs: Sequence[Job[Work]]) -> None:
        """The model path for a micro-batch, on a worker thread: the serving version's jobs see ONE version,
        a canary's jobs the version on trial."""
        for candidate in (False, True):
            group = [j for j in jobs if j.payload.candidate == candidate]
            if not group:
                continue
            with self.deployment.router.pin(candidate=candidate) as version:
                results = self.model.rank(version, [j.payload for j in group])
            for job, result in zip(group, results, strict=True):
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    # ------------------------------------------------------------------------------------- fallback

    def _fallback(self, started: _Started, reason: str) -> RecommendResponse:
        work = started.work
        request = work.request
        policy = request.fallback or self.env.fallback
        if policy == "none":
            raise ServingUnavailable(f"the model path did not answer ({reason}) and the request's fallback is none")
        if policy == "cached":
            hit = self._last_good.get(started.key)
            # only the pinned version's own answer: one of the version switched away from (a rollback's bad
            # version above all) would be that version answering a request begun after the switch
            if hit is not None and hit[0] == started.version.name:
                return RecommendResponse.model_validate_json(hit[1]).model_copy(
                    update={
                        "source": "fallback",
                        "took_ms": _ms_since(started.start),
                        "fallback": FallbackInfo(reason=reason, source="cached", key=hit[0]),
                    }
                )
        items, list_key = popular_answer(
            started.version.bundle.popular, self.deployment.catalogue, request, work.record, work.excluded, work.where
        )
        return RecommendResponse(
            canvas=request.canvas,
            version=started.version.name,
            items=items,
            took_ms=_ms_since(started.start),
            source="fallback",
            fallback=FallbackInfo(reason=reason, source="popular", key=list_key),
        )

    # ------------------------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            if self.precomputed is not None:
                self.precomputed.close()
            self._batcher.close()
            self.trials.close()


# ------------------------------------------------------------------------------------------- helpers


def request_key(request: RecommendRequest) -> str:
    """What identifies a request's answer (deadline and fallback policy do not change it)."""
    return json.dumps(request.model_dump(exclude={"timeout_ms", "fallback"}), sort_keys=True, separators=(",", ":"))


def _ms_since(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 3)
