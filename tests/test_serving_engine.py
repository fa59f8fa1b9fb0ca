"""The serving engine without HTTP: answers, heterogeneous candidates, rules, limits, batching, caching,
precomputed mode and fallbacks under injected slowness and failures."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monorec.config import SOURCE_NAMES
from monorec.deployment import Deployment
from monorec.deployment.version import ServingVersion
from monorec.environments import CanvasRules
from monorec.errors import CanvasNotServed, RequestError, ServingUnavailable
from monorec.registry import Registry
from monorec.serving.messages import RecommendRequest, RecommendResponse
from serving_fixtures import deployed, engine_for


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory, two_versions: Registry, prepared) -> Iterator[Deployment]:  # type: ignore[no-untyped-def]
    d = deployed(tmp_path_factory.mktemp("serve") / "dep", two_versions, prepared.catalogue)
    yield d
    d.close()


def req(canvas: str, context: dict | None = None, **kw: object) -> RecommendRequest:  # type: ignore[type-arg]
    return RecommendRequest(canvas=canvas, context=context or {}, **kw)  # type: ignore[arg-type]


def assert_valid(r: RecommendResponse, dep: Deployment, k: int) -> None:
    ids = [i.entity_id for i in r.items]
    assert len(ids) == len(set(ids)) and 0 < len(ids) <= k
    catalogue = dep.catalogue.entities(ids)
    assert set(ids) <= set(catalogue), "answered an entity that is not in the catalogue"
    for item in r.items:
        assert item.entity_type == catalogue[item.entity_id].entity_type


def test_every_canvas_answers_with_scores_predictions_and_the_version(dep: Deployment, prepared) -> None:  # type: ignore[no-untyped-def]
    config = dep.versions["v0001"].bundle.config
    with engine_for(dep) as engine:
        for canvas, context in [
            ("home", {"user_id": "u1", "country": "US", "hour": 20}),
            ("related", {"source_item_id": prepared.catalogue["entity_id"][0]}),
            ("search", {"query": "space wedding"}),
            ("browse", {"category": "drama"}),
        ]:
            r = engine.recommend(req(canvas, context, k=7))
            assert r.source == "model" and r.fallback is None and r.version == "v0001"
            assert_valid(r, dep, 7)
            assert len(r.items) == 7
            scores = [i.score for i in r.items]
            assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
            objectives = set(config.canvas(canvas).objectives)
            for item in r.items:
                assert set(item.predictions) == objectives
                for name, value in item.predictions.items():
                    if config.objective(name).kind == "binary":
                        assert 0.0 <= value <= 1.0
            assert r.took_ms > 0
            # the sources that answered, and for each entity the ones that proposed it
            declared = config.canvas(canvas).sources
            assert r.sources == [s for s in SOURCE_NAMES if s in declared]
            assert all(item.sources and set(item.sources) <= set(r.sources) for item in r.items)


def test_the_model_path_times_each_stage_of_every_answer(dep: Deployment) -> None:
    """The stage clock behind /metrics and bench/profile_request.py: each model answer passes every stage
    once, in order, and the stages' time fits within the calls' own."""
    with engine_for(dep) as engine:
        asked = [("home", {"user_id": "u1"}), ("search", {"query": "x"})]
        start = time.perf_counter()
        answers = [engine.recommend(req(canvas, context)) for canvas, context in asked]
        wall = time.perf_counter() - start
        assert all(a.source == "model" for a in answers)
        times = engine.model.stages.snapshot()
        path = ["validate", "featurize", "context_tower", "retrieve", "sources", "gather", "ranker", "finish", "answer"]
        assert list(times) == path
        assert times["validate"][0] == times["answer"][0] == 2  # per request
        assert all(calls >= 1 and seconds > 0 for calls, seconds in times.values())
        assert sum(seconds for _, seconds in times.values()) <= wall


@pytest.mark.parametrize("fault", ["fails", "late"])
def test_a_failing_or_late_source_is_skipped_and_the_answer_says_so(dep: Deployment, monkeypatch, fault: str) -> None:  # type: ignore[no-untyped-def]
    version = dep.versions["v0001"]
    real = version.sources.propose
    release = threading.Event()

    def broken(source, canvas, records, depth):  # type: ignore[no-untyped-def]
        if source == "lexical":
            if fault == "fails":
                raise RuntimeError("lexical index unavailable")
            release.wait(5.0)  # e.g. a remote engine that stalls
        return real(source, canvas, records, depth)

    monkeypatch.setattr(version.sources, "propose", broken)
    monkeypatch.setattr(version.sources, "remote", {"lexical"})  # as with Qdrant's sparse vectors
    declared = version.bundle.config.canvas("search").sources
    with engine_for(dep, source_timeout_ms=50.0, latency_budget_ms=3000.0) as engine:
        started = time.monotonic()
        r = engine.recommend(req("search", {"query": "space wedding"}, k=5))
        waited = time.monotonic() - started
        release.set()
    assert r.source == "model" and r.fallback is None and len(r.items) == 5
    assert r.sources == [s for s in SOURCE_NAMES if s in declared and s != "lexical"]
    assert all(item.sources and "lexical" not in item.sources for item in r.items)
    assert waited < 2.0  # the late source was not waited for (it would have taken 5 s)
    assert version.skipped_sources["lexical"] >= 1  # counted (monorec_sources_skipped in /metrics)


def test_unknown_ids_in_the_context_are_cold_start_not_errors(dep: Deployment) -> None:
    with engine_for(dep) as engine:
        r = engine.recommend(req("home", {"user_id": "never-seen-user", "country": "Atlantis"}, k=5))
        assert r.source == "model" and len(r.items) == 5


def test_heterogeneous_candidates_are_ranked_together_and_filtered_by_type(dep: Deployment, prepared) -> None:  # type: ignore[no-untyped-def]
    types = set(prepared.catalogue["entity_type"].to_list())
    assert types == {"movie", "series"}
    with engine_for(dep) as engine:
        both = engine.recommend(req("home", {"user_id": "u1"}, k=40, candidates={"entity_types": ["movie", "series"]}))
        assert {i.entity_type for i in both.items} == types  # one ranked list across entity types
        scores = [i.score for i in both.items]
        assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
        for only in types:
            r = engine.recommend(req("home", {"user_id": "u1"}, k=10, candidates={"entity_types": [only]}))
            assert {i.entity_type for i in r.items} == {only}
            # the same ranker: the filtered list is the full list's order restricted to that type
            expected = [i.entity_id for i in both.items if i.entity_type == only][: len(r.items)]
            assert [i.entity_id for i in r.items][: len(expected)] == expected
        r = engine.recommend(req("browse", {"category": "drama"}, k=10, candidates={"categories": ["horror"]}))
        assert r.items and all("horror" in i.categories for i in r.items)


def test_explicit_candidates_are_ranked_and_unknown_ones_reported(dep: Deployment, prepared) -> None:  # type: ignore[no-untyped-def]
    ids = prepared.catalogue["entity_id"].to_list()[:12]
    with engine_for(dep) as engine:
        r = engine.recommend(
            req("home", {"user_id": "u2"}, k=20, candidates={"ids": [*ids, "no-such-entity"], "exclude": ids[:2]})
        )
        assert {i.entity_id for i in r.items} == set(ids[2:])
        assert r.unknown_candidates == ["no-such-entity"]
        full = engine.recommend(req("home", {"user_id": "u2"}, k=20, candidates={"ids": ids}))
        scores = {i.entity_id: i.score for i in full.items}
        assert all(scores[i.entity_id] == pytest.approx(i.score, abs=1e-6) for i in r.items)


def test_business_rules_per_canvas(dep: Deployment, prepared) -> None:  # type: ignore[no-untyped-def]
    source = prepared.catalogue["entity_id"][3]
    with engine_for(dep) as plain:
        base = plain.recommend(req("related", {"source_item_id": source}, k=10))
        assert source not in [i.entity_id for i in base.items]  # exclude_seen drops the source item
        home = [i.entity_id for i in plain.recommend(req("home", {"user_id": "u1"}, k=10)).items]
        search = plain.recommend(req("search", {"query": "space"}, k=10)).items
    pinned = prepared.catalogue["entity_id"][-1]
    rules = {"home": CanvasRules(max_per_category=1, pins={pinned: 0})}
    with engine_for(dep, rules=rules) as engine:
        r = engine.recommend(req("home", {"user_id": "u1"}, k=10))
        ids = [i.entity_id for i in r.items]
        assert ids[0] == pinned
        firsts = [i.categories[0] for i in r.items[1:] if i.categories]
        distinct = len(set(firsts))
        assert firsts[:distinct] == list(dict.fromkeys(firsts))[:distinct]  # one per category first
        assert ids != home
        assert engine.recommend(req("search", {"query": "space"}, k=10)).items == search  # rules are per canvas
    with engine_for(dep, rules={"home": CanvasRules(pins={pinned: 2})}) as pins_only:  # ids-only rules path
        ids = [i.entity_id for i in pins_only.recommend(req("home", {"user_id": "u1"}, k=10)).items]
        assert ids[2] == pinned
        assert [e for e in ids if e != pinned] == [e for e in home if e != pinned][:9]


def test_limits_and_bad_fields_are_named(dep: Deployment) -> None:
    with engine_for(dep, canvases=("home", "search"), max_k=20) as engine:
        cases = [
            (req("nowhere"), "canvas"),
            (req("home", k=21), "k"),
            (req("home", {"favourite_colour": "red"}), "context.favourite_colour"),
            (req("search", {"query": "x" * 10_000}), "context.query"),
            (req("home", {"hour": "noon"}), "context.hour"),
            (req("home", candidates={"entity_types": ["spaceship"]}), "candidates.entity_types"),
        ]
        for request, field in cases:
            with pytest.raises(RequestError) as info:
                engine.recommend(request)
            assert info.value.field == field
        with pytest.raises(CanvasNotServed):
            engine.recommend(req("browse", {"category": "drama"}))
        with pytest.raises(RequestError) as info:
            engine.recommend_many([req("home"), req("home", k=99)])
        assert info.value.field == "requests.1.k"


def test_micro_batched_answers_equal_one_by_one_answers(dep: Deployment) -> None:
    requests = [req("home", {"user_id": f"u{i}"}, k=8) for i in range(24)] + [
        req("search", {"query": q}, k=8) for q in ("space", "wedding", "monster", "legend")
    ]
    with engine_for(dep) as single:
        expected = [single.recommend(r) for r in requests]
    with engine_for(dep, max_batch=8, max_wait_ms=20.0, worker_threads=1, latency_budget_ms=5000.0) as batched:
        got = batched.recommend_many(requests)
    for e, g in zip(expected, got, strict=True):
        assert g.source == "model"
        assert [i.entity_id for i in g.items] == [i.entity_id for i in e.items]
        assert [i.score for i in g.items] == pytest.approx([i.score for i in e.items], abs=1e-5)


def test_answer_cache_serves_identical_requests_until_the_version_changes(dep: Deployment) -> None:
    with engine_for(dep, cache_ttl_s=60.0) as engine:
        first = engine.recommend(req("home", {"user_id": "u3"}, k=5))
        second = engine.recommend(req("home", {"user_id": "u3"}, k=5, timeout_ms=50))
        assert (first.source, second.source) == ("model", "cache")
        assert second.items == first.items
        other = engine.recommend(req("home", {"user_id": "u3"}, k=6))
        assert other.source == "model"


def test_precomputed_mode_serves_stored_answers_and_goes_online_for_new_keys(dep: Deployment) -> None:
    knobs = {"mode": "precomputed", "precompute": {"home": "user_id"}, "precompute_k": 60, "refresh_s": 0.0}
    with engine_for(dep, **knobs) as engine:
        assert engine.precomputed is not None
        deadline = time.monotonic() + 30
        while engine.precomputed.version != "v0001":
            assert time.monotonic() < deadline, "tables were not scored"
            time.sleep(0.05)
        user = dep.versions["v0001"].bundle.featurizer.known_values("user_id")[0]
        stored = engine.recommend(req("home", {"user_id": user}, k=5))
        assert stored.source == "precomputed" and stored.version == "v0001"
        with engine_for(dep) as online:
            live = online.recommend(req("home", {"user_id": user}, k=5))
        assert [i.entity_id for i in stored.items] == [i.entity_id for i in live.items]
        assert engine.recommend(req("home", {"user_id": "brand-new-user"}, k=5)).source == "model"
        assert engine.recommend(req("search", {"query": "space"}, k=5)).source == "model"
        filtered = engine.recommend(req("home", {"user_id": user}, k=5, candidates={"entity_types": ["series"]}))
        assert filtered.source == "precomputed" and {i.entity_type for i in filtered.items} == {"series"}


def test_precomputed_tables_are_refreshed_on_schedule(dep: Deployment) -> None:
    knobs = {"mode": "precomputed", "precompute": {"browse": "category"}, "refresh_s": 0.2}
    with engine_for(dep, **knobs) as engine:
        assert engine.precomputed is not None
        deadline = time.monotonic() + 30
        while engine.precomputed.refreshes < 3:
            assert time.monotonic() < deadline, "the tables were not scored again on schedule"
            time.sleep(0.05)
        assert engine.recommend(req("browse", {"category": "drama"}, k=5)).source == "precomputed"


# ------------------------------------------------------------------------------------------ fallbacks


def test_fallback_answers_within_the_deadline_under_injected_slowness_and_failures(
    dep: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seeded mix of slow (past the deadline), failing and healthy model calls from 8 threads: every
    answer is valid, says whether a fallback answered and why, and arrives by the deadline + 60 ms (8
    threads on 2 cores: a healthy answer takes tens of ms, so the deadline leaves it room)."""
    rng = random.Random(7)
    lock = threading.Lock()
    real_rank = ServingVersion.rank

    def chaotic_rank(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        with lock:
            roll = rng.random()
        if roll < 0.3:
            time.sleep(0.4)  # far past the 150 ms deadline
        elif roll < 0.5:
            raise RuntimeError("injected ranker failure")
        return real_rank(self, *args, **kwargs)

    monkeypatch.setattr(ServingVersion, "rank", chaotic_rank)
    deadline_ms, margin_ms = 150.0, 60.0
    results: list[tuple[RecommendRequest, RecommendResponse, float]] = []
    with engine_for(dep, worker_threads=4, latency_budget_ms=deadline_ms) as engine:

        def client(i: int) -> None:
            for j in range(12):
                context = {"user_id": f"u{(i * 12 + j) % 50}", "country": ["US", "DE", "FR"][j % 3]}
                request = req("home", context, k=5, fallback="cached" if j % 4 == 0 else None)
                t0 = time.monotonic()
                response = engine.recommend(request)
                elapsed = (time.monotonic() - t0) * 1000
                with lock:
                    results.append((request, response, elapsed))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    reasons = {r.fallback.reason for _, r, _ in results if r.fallback is not None}
    assert {"deadline", "error: RuntimeError"} <= reasons
    assert any(r.source == "model" for _, r, _ in results)
    for request, response, elapsed in results:
        assert elapsed <= deadline_ms + margin_ms, f"answered after {elapsed:.1f} ms"
        assert_valid(response, dep, 5)
        assert (response.source == "fallback") == (response.fallback is not None)
        if response.fallback is not None and response.fallback.source == "popular":
            country = request.context["country"]
            assert response.fallback.key == f"home|country={country}"
            popular, _ = dep.versions["v0001"].bundle.popular.lookup("home", {"country": country})
            assert [i.entity_id for i in response.items] == popular[:5]


def test_cached_fallback_repeats_the_last_good_answer_and_none_refuses(
    dep: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    with engine_for(dep, fallback="cached") as engine:
        good = engine.recommend(req("search", {"query": "legend"}, k=5))
        assert good.source == "model"

        def broken(self, *a, **k):  # type: ignore[no-untyped-def]
            raise RuntimeError("down")

        monkeypatch.setattr(ServingVersion, "rank", broken)
        again = engine.recommend(req("search", {"query": "legend"}, k=5))
        assert again.source == "fallback" and again.fallback is not None
        assert (again.fallback.source, again.fallback.reason) == ("cached", "error: RuntimeError")
        assert again.items == good.items
        new = engine.recommend(req("search", {"query": "monster"}, k=5))  # nothing cached: popular
        assert new.fallback is not None and new.fallback.source == "popular" and new.items
        with pytest.raises(ServingUnavailable):
            engine.recommend(req("search", {"query": "legend"}, k=5, fallback="none"))


def test_a_cached_fallback_never_answers_with_the_version_switched_away_from(
    tmp_path: Path, two_versions: Registry, prepared, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """After a switch (a rollback above all) a request is answered by the version now serving, fallbacks
    included: the last good answer of the other version is not a fallback for it."""
    with (
        deployed(tmp_path / "dep", two_versions, prepared.catalogue) as two,
        engine_for(two, fallback="cached") as engine,
    ):
        request = req("search", {"query": "legend"}, k=5)
        assert engine.recommend(request).version == "v0001"
        two.deploy("v0002")

        def broken(self, *a, **k):  # type: ignore[no-untyped-def]
            raise RuntimeError("down")

        monkeypatch.setattr(ServingVersion, "rank", broken)
        fallback = engine.recommend(request)
        assert fallback.version == "v0002" and fallback.fallback is not None
        assert fallback.fallback.source == "popular"  # v0002 has no good answer of its own yet
        monkeypatch.undo()
        good = engine.recommend(request)
        assert good.version == "v0002" and good.source in ("model", "cache")
        monkeypatch.setattr(ServingVersion, "rank", broken)
        again = engine.recommend(request)
        assert again.fallback is not None and again.fallback.source == "cached" and again.items == good.items


def test_no_serving_version_is_unavailable(tmp_path: Path, two_versions: Registry) -> None:
    with (
        Deployment(tmp_path / "empty", two_versions) as empty,
        engine_for(empty) as engine,
        pytest.raises(ServingUnavailable),
    ):
        engine.recommend(req("home", {"user_id": "u1"}))


def test_odd_queries_are_answered_and_never_parsed_as_query_syntax(dep: Deployment) -> None:
    """Punctuation, stop words only, non-Latin scripts, blanks: the lexical source finds nothing (or the
    words it knows) and the other sources answer; query syntax characters are text, never operators."""
    with engine_for(dep) as engine:
        for query in ["!!!???", "the of and", "кино робот", "宇宙 ロボット", "   ", 'robot)(AND OR:* "', "a" * 256]:
            r = engine.recommend(req("search", {"query": query}, k=5))
            assert r.source == "model" and len(r.items) == 5, query
            assert "embedding" in r.sources
    version = dep.versions["v0001"]
    some = version.known(version.bundle.popular.lists[next(iter(version.bundle.popular.lists))])[:1]
    word = dep.catalogue.entities(some)[some[0]].title.split()[0]
    found, answered = version.propose("search", [{"query": f'{word})(AND OR:* "'}])
    assert "lexical" in answered
    by_lexical = [e for e, scores in found[0].items() if scores[1] > 0]
    titles = dep.catalogue.entities(by_lexical)
    assert by_lexical and all(word.lower() in titles[e].title.lower() for e in by_lexical)
