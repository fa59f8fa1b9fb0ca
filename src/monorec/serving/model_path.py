"""The model path of a request, without deadlines or fallbacks: validation against the schema and the
environment, then retrieval and ranking of a micro-batch with ONE pinned version (steps 1 and 3 of
:mod:`monorec.serving.engine`). The engine, the precomputed tables and the trial's shadow scoring all
answer through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from monorec.config import SOURCE_NAMES
from monorec.deployment.served import ServedDeployment
from monorec.deployment.version import ServingVersion
from monorec.environments import EnvironmentSpec
from monorec.errors import CanvasNotServed, RequestError
from monorec.index import EntityFilter
from monorec.serving.answers import entity_out, matches
from monorec.serving.messages import RecommendRequest, ScoredEntity
from monorec.serving.rules import Scored, apply_rules, canvas_rules, needs_entity_info
from monorec.serving.user_context import encode_contexts, with_recent_history
from monorec.stage_times import StageTimes
from monorec.stream.catalogue import Entity

__all__ = ["ModelPath", "Ranked", "Work"]


@dataclass(frozen=True)
class Work:
    """A validated request on its way through the model path."""

    request: RecommendRequest
    record: dict[str, Any]  # the normalized unified context
    excluded: frozenset[str]
    where: EntityFilter | None
    depth: int
    candidate: bool = False  # a canary request: answered by the version on trial


@dataclass(frozen=True)
class Ranked:
    version: str
    items: list[ScoredEntity]
    unknown: list[str]
    sources: list[str]  # the candidate sources that answered


class ModelPath:
    """Validates requests and answers micro-batches of them with one version, under one environment's knobs."""

    def __init__(self, deployment: ServedDeployment, env: EnvironmentSpec) -> None:
        self.deployment = deployment  # the router, the trials and the catalogue (entity descriptions)
        self.env = env
        self.catalogue = deployment.catalogue
        self.stages = StageTimes()  # where the model path's time goes, stage by stage (``/metrics``)

    def with_recent_history(self, request: RecommendRequest, version: ServingVersion) -> RecommendRequest:
        """See :func:`monorec.serving.user_context.with_recent_history`."""
        return with_recent_history(request, version, self.catalogue)

    def validate(self, request: RecommendRequest, version: ServingVersion, *, max_k: int | None = None) -> Work:
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
        return Work(request, record, frozenset(excluded), where, depth)

    @torch.no_grad()
    def rank(self, version: ServingVersion, works: Sequence[Work]) -> list[Ranked | BaseException]:
        """Retrieve and rank a batch with one version: one context forward, one search per distinct filter,
        one ranker forward over every (request, candidate) pair. Each stage's time goes to ``stages``."""
        stages = self.stages
        runtime = self.env.model_runtime
        cf, ce = encode_contexts(
            version,
            [(w.request.canvas, w.record) for w in works],
            self.env.user_embeddings,
            stages=stages,
            runtime=runtime,
        )
        with stages.stage("retrieve"):
            candidates, unknown, searched = self._retrieve(version, works, ce)
        from_index = {i: set(candidates[i]) for i in searched}
        with stages.stage("sources"):
            proposed, answered = self._propose(version, works, searched)
            for i, found in proposed.items():
                held = set(candidates[i])
                candidates[i] += [e for e in found if e not in held]
        with stages.stage("gather"):
            flat = [e for ids in candidates for e in ids]
            try:
                item_feats, item_emb = version.candidate_rows(flat)
            except KeyError:  # deleted since the search: rank what is still there
                candidates = [version.indexed(version.known(ids)) for ids in candidates]
                flat = [e for ids in candidates for e in ids]
                item_feats, item_emb = version.candidate_rows(flat)
            # numpy, not torch, between the two forwards: a torch op there pays a cold dispatcher (~10x)
            owner = np.repeat(np.arange(len(works)), [len(c) for c in candidates])  # (N,) each pair's request
            task = np.array([version.schema.task_index(w.request.canvas) for w in works], dtype=np.int64)[owner]
            sources = _source_scores(candidates, proposed)
        with stages.stage("ranker"):
            score_rows, logit_rows = version.rank(
                cf, ce, torch.from_numpy(owner), item_feats, item_emb, torch.from_numpy(task), sources, runtime
            )
        out: list[Ranked | BaseException] = []
        start = 0
        with stages.stage("finish"):
            for i, w in enumerate(works):
                end = start + len(candidates[i])
                try:
                    found = proposed.get(i, {})
                    items = self._finish(
                        version,
                        w,
                        candidates[i],
                        score_rows[start:end],
                        logit_rows[start:end],
                        found,
                        from_index.get(i, set()),
                    )
                    used = ["embedding"] if w.request.candidates.ids is None else []
                    out.append(Ranked(version.name, items, unknown[i], used + answered.get(i, [])))
                except Exception as exc:  # one bad request never fails its batch-mates
                    out.append(exc)
                start = end
        return out

    def _retrieve(
        self, version: ServingVersion, works: Sequence[Work], ce: torch.Tensor
    ) -> tuple[list[list[str]], list[list[str]], list[int]]:
        """Per request: its candidates (the explicit ids this version holds, within the request's filter, or
        the index's nearest entities to its (B, D) context embedding, one search per distinct filter), the
        explicit ids it does not hold; and the rows that searched the index."""
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
                info = self.catalogue.entities(known)
                known = [e for e in known if e in info and matches(info[e], w.where)]
            candidates[i] = known
        queries = ce.numpy() if by_filter else np.empty((0, 0), np.float32)  # a torch call costs after ONNX
        for where, rows in by_filter.items():
            depth = max(works[i].depth for i in rows)
            hits = version.index.search(queries[rows], depth, where)
            for q, i in enumerate(rows):
                candidates[i] = [e for e, _ in hits.row(q)][: works[i].depth]
        return candidates, unknown, [i for rows in by_filter.values() for i in rows]

    def _propose(
        self, version: ServingVersion, works: Sequence[Work], rows: Sequence[int]
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
                    info = self.catalogue.entities(list(found))
                    found = {e: v for e, v in found.items() if e in info and matches(info[e], w.where)}
                out[i] = found
                answered[i] = names
        return out, answered

    def _finish(
        self,
        version: ServingVersion,
        work: Work,
        ids: list[str],
        scores: np.ndarray,
        logits: np.ndarray,
        proposed: Mapping[str, list[float]],
        from_index: set[str],
    ) -> list[ScoredEntity]:
        """Ranked candidates -> rules -> the best k, described, each with the sources that proposed it
        (``from_index``: what the vector index returned; ``proposed``: the other sources' scores). Rules see
        ids and scores (plus entity descriptions only when a configured rule reads them); predictions are
        computed for the k kept."""
        canvas = work.request.canvas
        spec = self.env.rules_for(canvas)
        info: Mapping[str, Entity] = {}
        if needs_entity_info(spec):
            order = _best_first(scores, len(scores))
            info = self.catalogue.entities(ids)
        else:  # only exclusions and pins: the best k + |excluded| + |pins| (and the pinned) decide the answer
            order = _best_first(scores, work.request.k + len(work.excluded) + len(spec.pins))
            if spec.pins:
                held = set(order)
                pinned = [j for j, e in enumerate(ids) if e in spec.pins and j not in held]
                order += sorted(pinned, key=lambda j: -scores[j])
        values = scores[order].tolist()
        ranked = [_scored(ids[j], values[i], info) for i, j in enumerate(order)]
        kept = apply_rules(ranked, canvas_rules(spec, work.excluded), work.request.k)
        row_of = {ids[j]: j for j in order}  # only the first candidates when no rule reads descriptions
        predictions = version.predictions(logits[[row_of[c.entity_id] for c in kept]], canvas)
        if not info:
            info = self.catalogue.entities([c.entity_id for c in kept])
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


# ------------------------------------------------------------------------------------------- helpers


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


def _best_first(scores: np.ndarray, n: int) -> list[int]:
    """Positions of the ``n`` highest of the (C,) scores, best first (a partition, then a sort of the n:
    the answer needs the first k and what rules may drop, not an order of every candidate)."""
    if n < len(scores):
        top = np.argpartition(-scores, n)[:n]
        return top[np.argsort(-scores[top], kind="stable")].tolist()
    return np.argsort(-scores, kind="stable").tolist()


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


def _source_scores(
    candidates: Sequence[Sequence[str]], proposed: Mapping[int, Mapping[str, list[float]]]
) -> torch.Tensor:
    """(N, S) offline source scores of the flattened candidates (request-major), 0 where no source proposed
    the candidate: only the proposed rows are filled (explicit candidates have none; a nested list of
    N x S floats would cost more than the rest of the gather)."""
    rows, values = [], []
    start = 0
    for i, ids in enumerate(candidates):
        found = proposed.get(i)
        if found:
            for j, e in enumerate(ids):
                v = found.get(e)
                if v is not None:
                    rows.append(start + j)
                    values.append(v)
        start += len(ids)
    out = np.zeros((start, len(SOURCE_NAMES)), dtype=np.float32)
    if rows:
        out[rows] = values
    return torch.from_numpy(out)
