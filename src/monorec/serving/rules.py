"""Business rules per canvas: small functions over a ranked candidate list, composed in order.

A rule takes the candidates best first and returns them best first; rules never invent entities. They
run after ranking and before the answer is cut to ``k``, so the engine retrieves more than ``k``
(``retrieval_depth``) to leave them room::

    rules = [exclude(seen), dedupe(by_title), diversify(max_per_category=2), boost(is_new, 1.2)]
    answer = apply_rules(ranked, rules, k=10)
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace

from monorec.environments import CanvasRules

__all__ = [
    "Rule",
    "Scored",
    "apply_rules",
    "boost",
    "canvas_rules",
    "dedupe",
    "diversify",
    "exclude",
    "needs_entity_info",
    "normalized_title",
    "pin",
    "scale",
]


@dataclass(frozen=True)
class Scored:
    """One ranked candidate: the entity, its blended score, and what rules look at."""

    entity_id: str
    score: float
    entity_type: str = ""
    categories: tuple[str, ...] = ()
    title: str = ""


Rule = Callable[[list[Scored]], list[Scored]]


def apply_rules(candidates: Sequence[Scored], rules: Sequence[Rule], k: int) -> list[Scored]:
    """The candidates through every rule in order, then the best ``k``."""
    out = list(candidates)
    for rule in rules:
        out = rule(out)
    return out[:k]


def exclude(ids: Collection[str]) -> Rule:
    """Drops the given entities (e.g. what the user has already seen, or the source item on `related`)."""
    banned = frozenset(ids)

    def rule(candidates: list[Scored]) -> list[Scored]:
        return [c for c in candidates if c.entity_id not in banned]

    return rule


def dedupe(key: Callable[[Scored], Hashable] = lambda c: c.entity_id) -> Rule:
    """Keeps the first (best) candidate of each ``key`` (default: the entity id; e.g. a normalised title
    drops duplicate listings of one item)."""

    def rule(candidates: list[Scored]) -> list[Scored]:
        seen: set[Hashable] = set()
        out = []
        for c in candidates:
            value = key(c)
            if value not in seen:
                seen.add(value)
                out.append(c)
        return out

    return rule


def diversify(max_per_category: int) -> Rule:
    """At most ``max_per_category`` candidates per (first) category in the leading positions; the others
    move behind, in order, so the list keeps its length when the catalogue is not diverse enough."""
    if max_per_category < 1:
        raise ValueError("max_per_category must be >= 1")

    def rule(candidates: list[Scored]) -> list[Scored]:
        counts: dict[str, int] = {}
        head, tail = [], []
        for c in candidates:
            category = c.categories[0] if c.categories else ""
            if counts.get(category, 0) < max_per_category:
                counts[category] = counts.get(category, 0) + 1
                head.append(c)
            else:
                tail.append(c)
        return head + tail

    return rule


def boost(predicate: Callable[[Scored], bool], factor: float) -> Rule:
    """Multiplies the score of the matching candidates by ``factor`` and re-sorts (stable for ties)."""
    if factor <= 0:
        raise ValueError("factor must be > 0")
    return scale(lambda c: factor if predicate(c) else 1.0)


def scale(factor_of: Callable[[Scored], float]) -> Rule:
    """Multiplies each candidate's score by ``factor_of(candidate)`` and re-sorts (stable for ties)."""

    def rule(candidates: list[Scored]) -> list[Scored]:
        scored = [replace(c, score=c.score * f) if (f := factor_of(c)) != 1.0 else c for c in candidates]
        return sorted(scored, key=lambda c: -c.score)

    return rule


def pin(positions: Mapping[str, int]) -> Rule:
    """Moves the given entities, when they are candidates, to fixed positions (0 = first); the others keep
    their order around them. Positions past the end put the entity last."""

    def rule(candidates: list[Scored]) -> list[Scored]:
        pinned = sorted(
            ((positions[c.entity_id], c) for c in candidates if c.entity_id in positions), key=lambda p: p[0]
        )
        out = [c for c in candidates if c.entity_id not in positions]
        for position, c in pinned:
            out.insert(min(max(position, 0), len(out)), c)
        return out

    return rule


def normalized_title(c: Scored) -> str:
    """The title compared by ``dedupe_titles``: case and surrounding spaces ignored."""
    return " ".join(c.title.lower().split())


def needs_entity_info(spec: CanvasRules) -> bool:
    """Whether the rules read entity types, categories or titles (else ids and scores suffice, and the
    engine looks up the descriptions of the answered entities only)."""
    return bool(spec.dedupe_titles or spec.max_per_category or spec.boost_types or spec.boost_categories)


def canvas_rules(spec: CanvasRules, excluded: Collection[str]) -> list[Rule]:
    """A canvas's configured rules, in a fixed order: exclude (the request's exclusions and, with
    ``exclude_seen``, the entities its context names), boosts, dedupe by title, diversity, pins."""
    rules: list[Rule] = []
    if excluded:
        rules.append(exclude(excluded))
    if spec.boost_types:
        types = spec.boost_types
        rules.append(scale(lambda c: types.get(c.entity_type, 1.0)))
    if spec.boost_categories:
        cats = spec.boost_categories  # an entity in several boosted categories gets the largest factor
        rules.append(scale(lambda c: max((cats.get(x, 1.0) for x in c.categories), default=1.0)))
    if spec.dedupe_titles:
        rules.append(dedupe(normalized_title))
    if spec.max_per_category:
        rules.append(diversify(spec.max_per_category))
    if spec.pins:
        rules.append(pin(spec.pins))
    return rules
