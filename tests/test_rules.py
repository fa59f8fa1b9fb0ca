"""Business rules: each rule's behaviour, and properties every composition keeps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monorec.serving.rules import Scored, apply_rules, boost, dedupe, diversify, exclude, pin


def ranked(*specs: tuple[str, str]) -> list[Scored]:
    """(id, category) pairs, best first, scores descending."""
    return [Scored(e, 1.0 - i / 100, "movie", (cat,), e.rstrip("'")) for i, (e, cat) in enumerate(specs)]


def ids(candidates: list[Scored]) -> list[str]:
    return [c.entity_id for c in candidates]


def test_each_rule() -> None:
    base = ranked(("a", "x"), ("b", "x"), ("c", "x"), ("d", "y"), ("a'", "z"), ("e", "y"))
    assert ids(exclude({"b", "zzz"})(base)) == ["a", "c", "d", "a'", "e"]
    assert ids(dedupe(lambda c: c.title)(base)) == ["a", "b", "c", "d", "e"]  # a' is a's duplicate
    assert ids(diversify(1)(base)) == ["a", "d", "a'", "b", "c", "e"]
    assert ids(diversify(2)(base)) == ["a", "b", "d", "a'", "e", "c"]
    boosted = boost(lambda c: c.categories == ("y",), 2.0)(base)
    assert ids(boosted)[:2] == ["d", "e"] and boosted[0].score == pytest.approx(2 * 0.97)
    assert ids(pin({"e": 0, "c": 2, "ghost": 0})(base)) == ["e", "a", "c", "b", "d", "a'"]
    assert ids(pin({"a": 99})(base))[-1] == "a"
    with pytest.raises(ValueError):
        diversify(0)
    with pytest.raises(ValueError):
        boost(lambda c: True, 0)


def test_rules_compose_in_order_and_cut_to_k() -> None:
    base = ranked(("a", "x"), ("b", "x"), ("c", "x"), ("d", "y"), ("e", "y"))
    out = apply_rules(base, [exclude({"a"}), diversify(1), pin({"e": 0})], k=3)
    assert ids(out) == ["e", "b", "d"]


candidate_lists = st.lists(
    st.tuples(st.sampled_from("abcdefgh"), st.sampled_from("xyz"), st.floats(0, 1)), max_size=20
).map(lambda rows: sorted((Scored(e, s, "movie", (c,)) for e, c, s in rows), key=lambda c: -c.score))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(candidate_lists, st.integers(1, 3), st.sampled_from("abcdefgh"), st.integers(1, 10))
def test_rules_never_invent_entities_and_keep_what_they_do_not_drop(candidates, cap, pinned, k) -> None:  # type: ignore[no-untyped-def]
    order_free = [diversify(cap), pin({pinned: 1}), boost(lambda c: c.categories == ("x",), 1.5)]
    for rule in order_free:  # these reorder only
        out = rule(list(candidates))
        assert sorted(ids(out)) == sorted(ids(candidates))
    out = apply_rules(candidates, [exclude({pinned}), dedupe(), diversify(cap)], k)
    assert set(ids(out)) <= set(ids(candidates)) - {pinned}
    assert len(set(ids(out))) == len(out) <= k
