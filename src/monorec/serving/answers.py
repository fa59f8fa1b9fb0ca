"""Building answers: entity descriptions with scores and predictions, entity filters on descriptions, and the
precomputed popular answer that stands in when the model path misses its deadline or fails."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from monorec.index import EntityFilter
from monorec.popular import PopularLists
from monorec.serving.messages import RecommendRequest, ScoredEntity
from monorec.serving.rules import Scored
from monorec.stream.catalogue import CatalogueStore, Entity

__all__ = ["entity_out", "matches", "popular_answer"]


def matches(entity: Entity, where: EntityFilter) -> bool:
    """Whether a described entity passes a request's type / category filter."""
    if where.entity_types and entity.entity_type not in where.entity_types:
        return False
    return not where.categories or any(c in where.categories for c in entity.categories)


def entity_out(
    c: Scored,
    entity: Entity | None,
    score: float | None,
    predictions: Mapping[str, float] | None = None,
    sources: Sequence[str] = (),
) -> ScoredEntity:
    """One answered entity (its stored description when known; ``score`` None for fallback answers). Built
    without validation: every value is typed here, and an answer holds up to ``max_k`` of them."""
    return ScoredEntity.model_construct(
        entity_id=c.entity_id,
        entity_type=entity.entity_type if entity else c.entity_type,
        title=entity.title if entity else c.title,
        categories=list(entity.categories if entity else c.categories),
        score=None if score is None else float(np.float32(score)),
        predictions={k: float(np.float32(v)) for k, v in (predictions or {}).items()},
        sources=list(sources),
    )


def popular_answer(
    popular: PopularLists,
    catalogue: CatalogueStore,
    request: RecommendRequest,
    record: Mapping[str, Any],
    excluded: Collection[str],
    where: EntityFilter | None,
) -> tuple[list[ScoredEntity], str]:
    """The most specific popular list for this canvas and context (and its key), filtered by the request's
    candidates and exclusions; explicit candidates are ordered by it."""
    ids, key = popular.lookup(request.canvas, record)
    if request.candidates.ids is not None:
        rank = {e: i for i, e in enumerate(ids)}
        ids = sorted(dict.fromkeys(request.candidates.ids), key=lambda e: rank.get(e, len(rank)))
    ids = [e for e in ids if e not in excluded]
    info = catalogue.entities(ids)
    out = []
    for e in ids:
        entity = info.get(e)
        if entity is None or (where is not None and not matches(entity, where)):
            continue
        out.append(entity_out(Scored(e, 0.0), entity, None))
        if len(out) == request.k:
            break
    return out, key
