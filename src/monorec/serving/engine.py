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
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import torch

from monorec.config import SOURCE_NAMES
from monorec.deploy import Deployment
from monorec.environments import EnvironmentSpec
from monorec.errors import CanvasNotServed, RequestError, ServingUnavailable
from monorec.feedback.journal import AnswerRecord, FeedbackJournal
from monorec.index import EntityFilter
from monorec.serving.answers import entity_out, matches, popular_answer
from monorec.serving.batcher import Job, MicroBatcher
from monorec.serving.cache import LruCache
from monorec.serving.messages import FallbackInfo, RecommendRequest, RecommendResponse, ScoredEntity
from monorec.serving.precomputed import PrecomputedTables
from monorec.serving.rules import Scored, apply_rules, canvas_rules, needs_entity_info
from monorec.serving.trial_watch import TrialWatch
from monorec.serving.user_context import encode_contexts, with_recent_history
from monorec.stream.catalogue import Entity
from monorec.versions import ServingVersion

__all__ = ["ServingEngine", "request_key"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Work:
    """A validated request on its way through the model path."""

    request: RecommendRequest
    record: dict[str, Any]  # the normalized unified context
    excluded: frozenset[str]
    where: EntityFilter | None
    depth: int
    candidate: bool = False  # a canary request: answered by the version on trial


@dataclass(frozen=True)
class _Started:
    """A request after validation: answered already (cache, precomputed) or waiting on the model path."""

    work: _Work
    key: str
    start: float
    version: ServingVersion
    ready: RecommendResponse | None
    future: Future[Any] | None = None
    deadline: float = 0.0


@dataclass(frozen=True)
class _Ranked:
    version: str
    items: list[ScoredEntity]
    unknown: list[str]
    sources: list[str]  # the candidate sources that answered


class ServingEngine:
    """Answers :class:`RecommendRequest` s over a :class:`Deployment` with one environment's knobs."""

    def __init__(self, deployment: Deployment, env: EnvironmentSpec, *, journal: FeedbackJournal | None = None) -> None:
        self.deployment = deployment
        self.env = env
        self.journal = journal  # every answer's context and entities, for the loop back to training
        # answers are cached as (version, JSON bytes): two objects per entry where a live answer is hundreds,
        # which the garbage collector would walk on every full collection (measured: 40 ms pauses)
        self._cache: LruCache[tuple[str, bytes]] | None = (
            LruCache(env.cache_size, env.cache_ttl_s) if env.cache_ttl_s > 0 else None
        )
        self._last_good: LruCache[tuple[str, bytes]] = LruCache(env.cache_size)
        self._batcher: MicroBatcher[_Work] = MicroBatcher(
            self._run_batch, workers=env.worker_threads, max_batch=env.max_batch, max_wait_s=env.max_wait_ms / 1000
        )
        self.trials = TrialWatch(self)  # measures both sides of a canary or shadow trial, aborts a bad one
        self.precomputed: PrecomputedTables | None = None
        if env.mode == "precomputed":
            self.precomputed = PrecomputedTables(self)
        self._closed = threading.Event()

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
        router = self.deployment.router
        version = router.current
        if version is None:
            raise ServingUnavailable("no version is serving yet; deploy one first")
        trial = router.trial
        candidate = trial is not None and trial.takes(request.context)
        if candidate:  # a canary request: everything below reads the candidate version
            version = router.trial_version or version
        request = self.with_recent_history(request, version)
        work = dataclasses.replace(self.validate(request, version), candidate=candidate)
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
            ranked: _Ranked = started.future.result(timeout=max(0.0, started.deadline - time.monotonic()))
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

    def with_recent_history(self, request: RecommendRequest, version: ServingVersion) -> RecommendRequest:
        """See :func:`monorec.serving.user_context.with_recent_history`."""
        return with_recent_history(request, version, self.deployment.catalogue)

    def _issue(self, started: _Started, response: RecommendResponse) -> RecommendResponse:
        """The answer with its own request id (a cached answer gets a new one: it is another request),
        journaled with the context the model saw when the engine has a feedback journal."""
        request_id = uuid.uuid4().hex
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
            ranked: _Ranked = await asyncio.wait_for(
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

    def _answered(self, started: _Started, ranked: _Ranked) -> RecommendResponse:
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

    def validate(self, request: RecommendRequest, version: ServingVersion, *, max_k: int | None = None) -> _Work:
        """Checks a request against the schema and the environment and resolves what the model path needs.

        Raises:
            RequestError: naming the field at fault. CanvasNotServed: the environment does not serve it.
        """
        env = self.env
        if request.canvas not in version.schema.canvas_names:
            version.schema.task_index(request.canvas)  # raises RequestError naming the declared canvases
        if not env.serves(request.canvas):
            raise CanvasNotServed(request.canvas, env.canvases)
        if request.k > (max_k or env.max_k):
            raise RequestError("k", f"{request.k} exceeds this environment's max_k {max_k or env.max_k}")
        explicit = request.candidates.ids
        if explicit is not None and len(explicit) > env.max_explicit_candidates:
            raise RequestError(
                "candidates.ids", f"{len(explicit)} ids exceed the limit of {env.max_explicit_candidates}"
            )
        types = request.candidates.entity_types
        declared = version.bundle.config.entity_types
        for t in types or ():
            if t not in declared:
                raise RequestError("candidates.entity_types", f"unknown entity type {t!r}; declared: {declared}")
        try:
            record = version.schema.normalize(request.canvas, request.context, version.titles)
        except RequestError as exc:  # the schema names the context field; the API names its place in the body
            raise RequestError(f"context.{exc.field}", exc.reason) from None
        excluded = set(request.candidates.exclude)
        if env.rules_for(request.canvas).exclude_seen:
            excluded |= _named_entities(version, request.context)
        where = None
        if types or request.candidates.categories:
            where = EntityFilter(
                entity_types=tuple(types) if types else None,
                categories=tuple(request.candidates.categories) if request.candidates.categories else None,
            )
        depth = max(env.retrieval_depth, request.k) + min(len(excluded), env.retrieval_depth)
        return _Work(request, record, frozenset(excluded), where, depth)

    # ---------------------------------------------------------------------------------- model path

    def _run_batch(self, jobs: Sequence[Job[_Work]]) -> None:
        """The model path for a micro-batch, on a worker thread: the serving version's jobs see ONE version,
        a canary's jobs the version on trial."""
        for candidate in (False, True):
            group = [j for j in jobs if j.payload.candidate == candidate]
            if not group:
                continue
            with self.deployment.router.pin(candidate=candidate) as version:
                results = self.rank_works(version, [j.payload for j in group])
            for job, result in zip(group, results, strict=True):
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    @torch.no_grad()
    def rank_works(self, version: ServingVersion, works: Sequence[_Work]) -> list[_Ranked | BaseException]:
        """Retrieve and rank a batch with one version: one context forward, one search per distinct filter,
        one ranker forward over every (request, candidate) pair."""
        cf, ce = encode_contexts(version, [(w.request.canvas, w.record) for w in works], self.env.user_embeddings)
        candidates: list[list[str]] = [[] for _ in works]
        unknown: list[list[str]] = [[] for _ in works]
        by_filter: dict[EntityFilter | None, list[int]] = {}
        for i, w in enumerate(works):
            explicit = w.request.candidates.ids
            if explicit is None:
                by_filter.setdefault(w.where, []).append(i)
                continue
            wanted = [e for e in dict.fromkeys(explicit) if e not in w.excluded]
            known = version.known(wanted)
            held = set(known)
            unknown[i] = [e for e in wanted if e not in held]
            if w.where is not None:  # explicit candidates still obey the request's type/category filter
                info = self.deployment.catalogue.entities(known)
                known = [e for e in known if e in info and matches(info[e], w.where)]
            candidates[i] = known
        queries = ce.numpy()
        for where, rows in by_filter.items():
            depth = max(works[i].depth for i in rows)
            hits = version.index.search(queries[rows], depth, where)
            for q, i in enumerate(rows):
                candidates[i] = [e for e, _ in hits.row(q)][: works[i].depth]
        from_index = {i: set(candidates[i]) for rows in by_filter.values() for i in rows}
        proposed, answered = self._propose(version, works, [i for rows in by_filter.values() for i in rows])
        for i, found in proposed.items():
            held = set(candidates[i])
            candidates[i] += [e for e in found if e not in held]
        flat = [e for ids in candidates for e in ids]
        try:
            item_feats, item_emb = version.candidate_rows(flat)
        except KeyError:  # deleted since the search: rank what is still there
            candidates = [version.indexed(version.known(ids)) for ids in candidates]
            flat = [e for ids in candidates for e in ids]
            item_feats, item_emb = version.candidate_rows(flat)
        owner = torch.repeat_interleave(torch.arange(len(works)), torch.tensor([len(c) for c in candidates]))
        task = torch.tensor([version.schema.task_index(w.request.canvas) for w in works], dtype=torch.long)[owner]
        zero = [0.0] * len(SOURCE_NAMES)
        sources = torch.tensor(
            [proposed.get(i, {}).get(e, zero) for i, ids in enumerate(candidates) for e in ids], dtype=torch.float32
        ).reshape(len(flat), len(SOURCE_NAMES))
        scores, logits = version.rank(cf[owner], ce[owner], item_feats, item_emb, task, sources)
        out: list[_Ranked | BaseException] = []
        start = 0
        for i, w in enumerate(works):
            end = start + len(candidates[i])
            try:
                found = proposed.get(i, {})
                items = self._finish(
                    version, w, candidates[i], scores[start:end], logits[start:end], found, from_index.get(i, set())
                )
                searched = ["embedding"] if w.request.candidates.ids is None else []
                out.append(_Ranked(version.name, items, unknown[i], searched + answered.get(i, [])))
            except Exception as exc:  # one bad request never fails its batch-mates
                out.append(exc)
            start = end
        return out

    def _propose(
        self, version: ServingVersion, works: Sequence[_Work], rows: Sequence[int]
    ) -> tuple[dict[int, dict[str, list[float]]], dict[int, list[str]]]:
        """Row of ``works`` -> the candidates its canvas's offline sources add (entity id -> (S,) source
        scores), never an excluded entity nor one outside the request's type/category filter; and row ->
        the offline sources that answered it."""
        by_canvas: dict[str, list[int]] = {}
        for i in rows:
            by_canvas.setdefault(works[i].request.canvas, []).append(i)
        out: dict[int, dict[str, list[float]]] = {}
        answered: dict[int, list[str]] = {}
        for canvas, members in by_canvas.items():
            timeout_s = self.env.source_timeout_ms / 1000
            proposals, names = version.propose(canvas, [works[i].record for i in members], timeout_s)
            for i, found in zip(members, proposals, strict=True):
                w = works[i]
                found = {e: v for e, v in found.items() if e not in w.excluded}
                if w.where is not None and found:
                    info = self.deployment.catalogue.entities(list(found))
                    found = {e: v for e, v in found.items() if e in info and matches(info[e], w.where)}
                out[i] = found
                answered[i] = names
        return out, answered

    def _finish(
        self,
        version: ServingVersion,
        work: _Work,
        ids: list[str],
        scores: torch.Tensor,
        logits: torch.Tensor,
        proposed: Mapping[str, list[float]],
        from_index: set[str],
    ) -> list[ScoredEntity]:
        """Ranked candidates -> rules -> the best k, described, each with the sources that proposed it
        (``from_index``: what the vector index returned; ``proposed``: the other sources' scores). Rules see
        ids and scores (plus entity descriptions only when a configured rule reads them); predictions are
        computed for the k kept."""
        canvas = work.request.canvas
        spec = self.env.rules_for(canvas)
        order = torch.argsort(scores, descending=True).tolist()
        values = scores.tolist()
        info: Mapping[str, Entity] = {}
        if needs_entity_info(spec):
            info = self.deployment.catalogue.entities(ids)
        else:  # only exclusions and pins: the best k + |excluded| + |pins| (and the pinned) decide the answer
            limit = work.request.k + len(work.excluded) + len(spec.pins)
            order = order[:limit] + [j for j in order[limit:] if ids[j] in spec.pins]
        ranked = [_scored(ids[j], values[j], info) for j in order]
        kept = apply_rules(ranked, canvas_rules(spec, work.excluded), work.request.k)
        row_of = {e: j for j, e in enumerate(ids)}
        predictions = version.predictions(logits[[row_of[c.entity_id] for c in kept]], canvas)
        if not info:
            info = self.deployment.catalogue.entities([c.entity_id for c in kept])
        return [
            entity_out(
                c,
                info.get(c.entity_id),
                c.score,
                {n: float(v[i]) for n, v in predictions.items()},
                _proposed_by(c.entity_id, from_index, proposed),
            )
            for i, c in enumerate(kept)
        ]

    # ------------------------------------------------------------------------------------- fallback

    def _fallback(self, started: _Started, reason: str) -> RecommendResponse:
        work = started.work
        request = work.request
        policy = request.fallback or self.env.fallback
        if policy == "none":
            raise ServingUnavailable(f"the model path did not answer ({reason}) and the request's fallback is none")
        if policy == "cached":
            hit = self._last_good.get(started.key)
            if hit is not None:
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


def _named_entities(version: ServingVersion, context: Mapping[str, Any]) -> set[str]:
    """Entity ids the context names (source item, history): already seen, so not worth answering."""
    out: set[str] = set()
    for f in version.schema.fields:
        value = context.get(f.name)
        if f.vocabulary != "entity" or value is None:
            continue
        if isinstance(value, list):
            out.update(str(v) for v in value)
        elif f.kind == "id_list" and isinstance(value, str):
            out.update(v for v in value.split("|") if v)
        else:
            out.add(str(value))
    return out


def _proposed_by(entity_id: str, from_index: set[str], proposed: Mapping[str, list[float]]) -> list[str]:
    """The sources that proposed an entity, in ``SOURCE_NAMES`` order."""
    scores = proposed.get(entity_id)
    return [
        name
        for j, name in enumerate(SOURCE_NAMES)
        if (j == 0 and entity_id in from_index) or (j > 0 and scores is not None and scores[j] > 0)
    ]


def _scored(entity_id: str, score: float, info: Mapping[str, Entity]) -> Scored:
    e = info.get(entity_id)
    if e is None:
        return Scored(entity_id, score)
    return Scored(entity_id, score, e.entity_type, e.categories, e.title)
