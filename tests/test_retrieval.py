"""Candidate sources: the co-occurrence table, popular lists, and their union in evaluation (the lexical
index: tests/test_lexical.py)."""

import dataclasses
from collections import Counter, defaultdict

import numpy as np
import polars as pl
import pytest
import torch

from monorec.config import load_config, parse_config
from monorec.errors import ArtifactError, ConfigError
from monorec.evaluation.evaluate import request_sets
from monorec.evaluation.recommenders import ModelRecommender
from monorec.pipeline import default_config
from monorec.popular import PopularLists
from monorec.retrieval import CandidateSources, CooccurrenceTable


def _responses(rows):
    return pl.DataFrame(rows, schema=["user_id", "ts", "entity_id"], orient="row")


def test_cooccurrence_counts_match_a_direct_count():
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", t, f"e{rng.integers(0, 12)}") for u in range(30) for t in range(int(rng.integers(2, 9)))]
    rows.append((None, 0, "e1"))  # no user: skipped
    table = CooccurrenceTable.fit(_responses(rows), window=2, top_n=50)
    # the reference: each user's responses in time order, every pair at most 2 apart, both directions
    expected: dict[str, Counter] = defaultdict(Counter)
    by_user = defaultdict(list)
    for u, t, e in sorted((r for r in rows if r[0] is not None), key=lambda r: (r[0], r[1], r[2])):
        if not by_user[u] or by_user[u][-1] != (t, e):
            by_user[u].append((t, e))
    for seq in by_user.values():
        items = [e for _, e in seq]
        for i, a in enumerate(items):
            for b in items[i + 1 : i + 3]:
                if a != b:
                    expected[a][b] += 1
                    expected[b][a] += 1
    for a, counter in expected.items():
        row = table.row_of[a]
        got = {table.vocab[b]: c for b, c in zip(table.neighbours[row], table.counts[row], strict=True) if b >= 0}
        assert got == dict(counter)


def test_cooccurrence_proposes_from_seeds_recent_first_and_never_a_seed(tmp_path):
    rows = [("u1", 0, "x"), ("u1", 1, "y"), ("u2", 0, "x"), ("u2", 1, "y"), ("u3", 0, "z"), ("u3", 1, "w")]
    table = CooccurrenceTable.fit(_responses(rows), window=1)
    assert table.propose([["x"]], 5) == [[("y", 2.0)]]
    # "z" is the most recent seed (age 0), "x" older (age 1): w (1/1) before y (2/2 = 1.0, tie -> by row)
    proposed = table.propose([["z", "x"]], 5)[0]
    assert {e for e, _ in proposed} == {"w", "y"} and dict(proposed)["y"] == pytest.approx(1.0)
    assert table.propose([["x", "y"]], 5) == [[]]  # seeds are not proposed for their own request
    assert table.propose([["unknown"], []], 5) == [[], []]
    table.save(tmp_path / "c.npz")
    again = CooccurrenceTable.load(tmp_path / "c.npz")
    assert again.propose([["x"]], 5) == table.propose([["x"]], 5)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ArtifactError, match="co-occurrence"):
        CooccurrenceTable.load(tmp_path / "bad.npz")


def test_sources_read_the_query_and_the_seeds_the_canvas_declares(config, prepared):
    sources = CandidateSources.fit(config, prepared.responses("train"), prepared.catalogue, PopularLists())
    assert sources.query_of("search", {"query": "robot", "user_id": "u1"}) == "robot"
    assert sources.query_of("home", {"query": "robot"}) is None  # home declares no text field
    record = {"source_item_id": "m1", "history": "m7|m8|m9"}
    assert sources.seeds_of("related", record) == ["m1", "m9", "m8", "m7"]
    assert sources.seeds_of("home", record) == []  # the synthetic home declares neither


def test_relative_lexical_scores_divide_each_query_by_its_best_match(config, prepared):
    bm25 = CandidateSources.fit(config, prepared.responses("train"), prepared.catalogue, PopularLists())
    spec = dataclasses.replace(config.sources, lexical_score="relative")
    relative = CandidateSources(
        dataclasses.replace(config, sources=spec), bm25.lexical, bm25.cooccurrence, PopularLists()
    )
    titles = prepared.catalogue["title"].to_list()
    records = [{"query": " ".join(titles[0].split()[:2])}, {"query": titles[1].split()[-1]}, {"query": "zzzzqx"}]
    raw, scaled = bm25.propose("lexical", "search", records, 20), relative.propose("lexical", "search", records, 20)
    for hits, got in zip(raw[:2], scaled[:2], strict=True):
        assert len(hits) > 1 and hits[0][1] > 1.0  # BM25's own scale
        assert [e for e, _ in got] == [e for e, _ in hits]  # the same order
        assert got[0][1] == 1.0 and all(
            v == pytest.approx(w / hits[0][1]) for (_, v), (_, w) in zip(got, hits, strict=True)
        )
    assert raw[2] == scaled[2] == []


def test_config_refuses_unknown_sources_and_sources_without_input():
    raw = load_config(default_config("synthetic")).to_dict()
    raw["canvases"]["home"]["sources"] = {"lexical": 10, "magic": 5, "embedding": 0}
    raw["model"]["source_inputs"] = ["lexical", "embedding"]
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    text = str(err.value)
    assert "canvases.home.sources.magic" in text and "unknown source" in text
    assert "canvases.home.sources.lexical" in text and "no text field" in text
    assert "canvases.home.sources.embedding" in text
    assert "model.source_inputs.embedding" in text and "not an offline source" in text


def test_the_union_holds_every_source_and_the_fused_ranking_keeps_exclusions(trained, prepared):
    reqs = request_sets(trained.config, prepared, "test")
    rec = ModelRecommender(trained, prepared.catalogue, depth=5)
    search = reqs["search"]
    cand, _logits, feats, _ = next(rec.candidates(search, 5))
    assert cand.shape[1] > 5  # the embedding source's 5, then what lexical added
    lexical = rec.sources.propose("lexical", "search", search.contexts.slice(0, cand.shape[0]).to_dicts(), 100)
    for r in range(cand.shape[0]):
        row = [int(p) for p in cand[r] if p >= 0]
        banned = set(search.exclude[r].tolist())
        wanted = {rec.position_of[e] for e, _ in lexical[r]} - banned
        assert wanted <= set(row) and not banned & set(row)
        for j, p in enumerate(row):  # a lexical score exactly where lexical proposed the entity
            assert (feats[r, j, 1] > 0) == (p in wanted)
    top = rec.recommend(search, 10)
    for r in range(len(search)):
        assert not set(top[r].tolist()) & set(search.exclude[r].tolist())


def test_fusion_weights_are_chosen_on_validation_and_saved(trained, tmp_path):
    from monorec.bundle import ModelBundle

    weights = trained.meta["source_weights"]
    assert set(weights) == set(trained.config.canvas_names)
    assert "lexical" in weights["search"] and "popular" in weights["browse"]
    for row in weights.values():
        assert row["ndcg@10"] >= row["ndcg@10_ranker"]  # coordinate ascent never ends below its start
    trained.save(tmp_path / "b")
    loaded = ModelBundle.load(tmp_path / "b")
    assert loaded.model.source_weights.tolist() == trained.model.source_weights.tolist()
    assert loaded.cooccurrence is not None and loaded.cooccurrence.vocab == trained.cooccurrence.vocab


def test_a_bundle_without_sources_still_ranks(trained, prepared):
    old = dataclasses.replace(trained, cooccurrence=None)
    rec = ModelRecommender(old, prepared.catalogue, depth=5)
    reqs = request_sets(trained.config, prepared, "test")
    assert rec.recommend(reqs["related"], 10).shape[1] == 10


def test_cooccurrence_leaves_the_users_own_counts_out_when_asked():
    rng = np.random.default_rng(1)
    rows = [(f"u{u}", t, f"e{rng.integers(0, 10)}") for u in range(25) for t in range(int(rng.integers(2, 8)))]
    table = CooccurrenceTable.fit(_responses(rows), window=2, top_n=100, keep_own=True)
    seeds = [["e1", "e2"], ["e3"], ["e0", "e5", "e7"]]
    for user in ("u0", "u7", "u13"):
        # the reference: the table fitted without that user's responses at all
        without = CooccurrenceTable.fit(_responses([r for r in rows if r[0] != user]), window=2, top_n=100)
        got = table.propose(seeds, 20, users=[user] * len(seeds))
        want = without.propose(seeds, 20)
        for g, w in zip(got, want, strict=True):
            assert dict(g) == pytest.approx(dict(w))
    assert table.propose(seeds, 20, users=["nobody"] * 3) == table.propose(seeds, 20)
    with pytest.raises(ValueError, match="keep_own"):
        CooccurrenceTable.fit(_responses(rows), window=2).propose(seeds, 5, users=["u0"] * 3)


def test_the_proposal_table_holds_what_each_source_proposes(trained, prepared):
    from monorec.config import SOURCE_NAMES

    rec = ModelRecommender(trained, prepared.catalogue, depth=5)
    rows = prepared.canvases["related"].head(40).vstack(prepared.canvases["search"].head(40))
    records = rows.to_dicts()
    table = rec.sources.proposals(rows["canvas"].to_list(), records, rec.position_of)
    for r, record in enumerate(records):
        canvas = record["canvas"]
        expected: dict[int, list[float]] = {}
        for source, depth in trained.config.canvas(canvas).sources.items():
            if source == "embedding":
                continue
            for entity_id, score in rec.sources.propose(source, canvas, [record], depth)[0]:
                expected.setdefault(rec.position_of[entity_id], [0.0] * len(SOURCE_NAMES))[
                    SOURCE_NAMES.index(source)
                ] = score
        assert set(table.positions(r).tolist()) == set(expected)
        if expected:
            positions = list(expected)
            got = table.lookup(torch.full((len(positions),), r), torch.tensor(positions))
            assert got.numpy() == pytest.approx(np.array([expected[p] for p in positions], dtype=np.float32), rel=1e-5)
    # an entity nobody proposed, and padding, read as the sentinel 0
    assert table.lookup(torch.tensor([0, 0]), torch.tensor([-1, 10**6 % prepared.catalogue.height])).shape == (2, 4)
    assert float(table.lookup(torch.tensor([0]), torch.tensor([-1])).abs().sum()) == 0.0


def test_the_ranker_reads_the_source_scores_and_old_models_ignore_them(trained_with_source_inputs):
    from monorec.models.model import build_model

    trained = trained_with_source_inputs
    model = trained.model
    assert model.source_columns == [1, 2, 3]
    torch.manual_seed(0)
    n = 6
    cf = torch.randn(n, model.context_encoder.feature_dim)
    itf = torch.randn(n, model.item_encoder.feature_dim)
    emb = torch.randn(n, trained.model_kwargs["retrieval_dim"])
    task = torch.zeros(n, dtype=torch.long)
    none = model.rank(cf, emb, itf, emb, task)
    zeros = model.rank(cf, emb, itf, emb, task, torch.zeros(n, 4))
    proposed = model.rank(cf, emb, itf, emb, task, torch.tensor([[0.0, 3.0, 1.5, 0.8]] * n))
    assert torch.equal(none, zeros) and not torch.allclose(none, proposed)
    old_kwargs = {k: v for k, v in trained.model_kwargs.items() if k not in ("source_inputs", "source_weights")}
    old = build_model(old_kwargs).eval()
    assert old.source_columns == []
    assert torch.equal(old.rank(cf, emb, itf, emb, task), old.rank(cf, emb, itf, emb, task, torch.ones(n, 4)))


def test_training_rows_read_cooccurrence_without_their_own_user(trained, prepared):
    """The source inputs of a training row: the co-occurrence counts of every OTHER user (leave-one-user-out),
    while validation rows read the full table, as serving does."""
    from monorec.data.features import Featurizer
    from monorec.retrieval.sources import fit_cooccurrence, index_catalogue
    from monorec.training_data import TrainingData

    config = trained.config
    responses = prepared.responses("train")
    table = fit_cooccurrence(config, responses, keep_own=True)
    sources = CandidateSources(config, index_catalogue(prepared.catalogue), table, trained.popular)
    rows = prepared.rows("train", ["related"]).head(300)
    featurizer = Featurizer(config).fit(prepared.rows("train", config.canvas_names), prepared.catalogue)
    data = TrainingData.build(config, featurizer, rows, prepared.catalogue, "cpu", sources=sources, leave_own_out=True)
    full = TrainingData.build(config, featurizer, rows, prepared.catalogue, "cpu", sources=sources)
    assert data.proposals is not None and full.proposals is not None
    own = data.proposals.lookup(data.context_of_row, data.entity)[:, 2]
    everyone = full.proposals.lookup(full.context_of_row, full.entity)[:, 2]
    positive = data.primary == 1
    assert bool((own <= everyone + 1e-6).all())  # leaving a user out never adds
    assert bool((own[positive] < everyone[positive] - 1e-6).any())  # and it removes the row's own pair
    sources.close()


def test_popular_per_category_counts_every_canvas_by_membership(config):
    catalogue = pl.DataFrame(
        {"entity_id": ["a", "b", "c", "d"], "categories": ["drama", "drama|comedy", "comedy", None]}
    )
    responses = pl.DataFrame(
        {
            "canvas": ["home", "home", "home", "related", "browse", "browse"],
            "entity_id": ["b", "b", "a", "c", "a", "d"],
            "category": [None, None, None, None, "drama", "drama"],
        }
    )
    lists = PopularLists.fit(responses, config, catalogue=catalogue)
    # drama: a (home + browse) and b (home twice) tie at 2, by id; d is no drama, whatever its browse row
    assert lists.lists["browse|category=drama"] == ["a", "b"]
    assert lists.lookup("browse", {"category": "comedy"}) == (["b", "c"], "browse|category=comedy")
    # without the catalogue: the browse requests that carried the category, as before
    plain = PopularLists.fit(responses, config)
    assert plain.lists["browse|category=drama"] == ["a", "d"]


def _fusion_case(n: int, helped: int):
    """n requests of 3 candidates, the relevant one at position 2; the ranker puts it last everywhere, the
    lexical source (column 1) puts it first on ``helped`` requests and last on the others."""
    from monorec.evaluation.fusion import FusionInputs

    blend = torch.tensor([[0.3, 0.2, 0.1]] * n)
    sources = torch.zeros(n, 3, 4)
    sources[:helped, 2, 1] = 1.0  # lexical proposes the relevant candidate
    sources[helped:, 0, 1] = 1.0  # ... or a wrong one
    sources[helped:, 1, 1] = 0.5
    cands = torch.arange(3).repeat(n, 1)
    return FusionInputs(blend, sources, cands, [0, 1]), [np.array([2])] * n


def test_fusion_margin_keeps_only_gains_the_requests_agree_on():
    from monorec.evaluation.fusion import FusionRule, choose_weights

    # a gain on 2 requests of 40, a loss on none: any gain is kept at margin 0; at a margin of 2 standard
    # errors, 2 requests of 40 are not enough agreement
    inputs, relevant = _fusion_case(40, helped=2)
    weights, fused, alone = choose_weights(inputs, relevant, k=1, rule=FusionRule(margin=0.0))
    assert weights[1] > 0 and fused > alone
    weights, fused, alone = choose_weights(inputs, relevant, k=1, rule=FusionRule(margin=2.0))
    assert weights.tolist() == [0.0, 0.0, 0.0, 0.0] and fused == alone
    # the same source helping 30 of 40 requests clears the margin
    inputs, relevant = _fusion_case(40, helped=30)
    weights, fused, alone = choose_weights(inputs, relevant, k=1, rule=FusionRule(margin=2.0))
    assert weights[1] > 0 and fused == pytest.approx(0.75) and alone == 0.0


def _lexical_knows_a_third():
    """60 requests of 8 candidates, one relevant each; a random ranker and random sources, but the lexical
    source (column 1) scores the relevant candidate 2.0 on every third request."""
    from monorec.evaluation.fusion import FusionInputs

    rng = np.random.default_rng(0)
    n, c = 60, 8
    relevant = [np.array([int(rng.integers(0, c))]) for _ in range(n)]
    blend = torch.as_tensor(rng.normal(size=(n, c)), dtype=torch.float32)
    sources = torch.as_tensor(rng.random(size=(n, c, 4)), dtype=torch.float32)
    for r in range(0, n, 3):
        sources[r, relevant[r][0], 1] = 2.0
    return FusionInputs(blend, sources, torch.arange(c).repeat(n, 1), [0, 1, 2]), relevant


def test_fusion_cross_validation_keeps_the_blend_or_a_simple_order_and_reports_its_score():
    from monorec.evaluation.fusion import FusionRule, choose_weights, fused_ndcg

    inputs, relevant = _lexical_knows_a_third()
    fitted, fitted_score, _ = choose_weights(inputs, relevant, k=3)
    checked, checked_score, _ = choose_weights(inputs, relevant, k=3, rule=FusionRule(cv_repeats=3))
    simple = [[0.0] * 4] + [[1000.0 if i == j else 0.0 for i in range(4)] for j in (0, 1, 2)]
    assert checked.tolist() == fitted.tolist() or checked.tolist() in simple
    assert checked_score == pytest.approx(float(np.mean(fused_ndcg(inputs, checked, relevant, 3))))
    # beyond the lexical answers, what the blend fits is noise: the check keeps the lexical order alone
    assert fitted.tolist() not in simple
    assert checked.tolist() == [0.0, 1000.0, 0.0, 0.0] and checked_score <= fitted_score


def test_fusion_chosen_deeper_reads_hits_below_the_top_k_and_reports_at_k():
    from monorec.evaluation.fusion import FusionInputs, FusionRule, choose_weights, fused_ndcg

    # 30 candidates; the relevant one is last by the ranker, 5th by the lexical source (column 1): in no
    # order does it reach the top 2, so NDCG@2 cannot tell the two orders apart and keeps the ranker's,
    # while NDCG@10 sees the source lift it from 30th to 5th
    n, c = 20, 30
    blend = torch.linspace(1.0, 0.0, c).repeat(n, 1)
    sources = torch.zeros(n, c, 4)
    sources[:, :, 1] = torch.linspace(0.0, 1.0, c)  # the source reverses the ranker's order ...
    sources[:, c - 1, 1] = 0.8  # ... except the relevant last one, which it puts 5th or so
    inputs = FusionInputs(blend, sources, torch.arange(c).repeat(n, 1), [0, 1])
    relevant = [np.array([c - 1])] * n
    at_k, score, alone = choose_weights(inputs, relevant, k=2)
    assert at_k.tolist() == [0.0, 0.0, 0.0, 0.0] and score == alone == 0.0
    assert choose_weights(inputs, relevant, k=2, rule=FusionRule(select_k=2))[0].tolist() == at_k.tolist()  # = k
    deeper, score, alone = choose_weights(inputs, relevant, k=2, rule=FusionRule(select_k=10))
    assert deeper[1] > 0
    # the report stays at k: NDCG@2 of the chosen weights, and of the ranker alone
    assert score == pytest.approx(float(np.mean(fused_ndcg(inputs, deeper, relevant, 2)))) and alone == 0.0
    assert float(np.mean(fused_ndcg(inputs, deeper, relevant, 10))) > 0


def test_fusion_softmax_fit_weighs_each_source_by_what_it_knows():
    from monorec.evaluation.fusion import FusionInputs, FusionRule, choose_weights, fit_softmax, fused_ndcg

    inputs, relevant = _lexical_knows_a_third()
    n, c = inputs.candidates.shape
    blend = inputs.blend
    weights = fit_softmax(inputs, relevant)
    assert weights[1] > 5 * max(float(weights[0]), float(weights[2])) and weights[3] == 0.0  # 3: not used
    chosen, score, alone = choose_weights(inputs, relevant, k=3, rule=FusionRule("softmax"))
    assert chosen.tolist() == weights.tolist()
    assert score == pytest.approx(float(np.mean(fused_ndcg(inputs, chosen, relevant, 3)))) and score > alone

    # a source that proposes exactly the answers wins outright; one that scores nothing gets no weight
    perfect = torch.zeros(n, c, 4)
    for r in range(n):
        perfect[r, relevant[r][0], 3] = 1.0
    inputs = FusionInputs(blend, perfect, torch.arange(c).repeat(n, 1), [0, 3])
    weights = fit_softmax(inputs, relevant)
    assert weights[0] == 0.0 and weights[3] > 10
    assert float(np.mean(fused_ndcg(inputs, weights, relevant, 1))) == 1.0

    # no request's answer among its candidates: nothing to fit, every weight stays 0 (the ranker alone)
    elsewhere = [np.array([c + 5])] * n
    assert fit_softmax(inputs, elsewhere).tolist() == [0.0] * 4


def test_fusion_either_keeps_the_method_that_scores_higher_on_held_out_halves():
    from monorec.evaluation.fusion import (
        EITHER_SPLITS,
        FusionRule,
        choose_weights,
        fused_ndcg,
        two_fold_splits,
    )

    inputs, relevant = _lexical_knows_a_third()
    winners = set()
    for k in (1, 5):  # here the grid wins at k = 1 and the softmax fit at k = 5
        fitted = {m: choose_weights(inputs, relevant, k, FusionRule(m))[0] for m in ("grid", "softmax")}
        held_out = {}
        for m in fitted:
            scores = []
            for fit, score in two_fold_splits(len(relevant), EITHER_SPLITS):
                w = choose_weights(inputs.take(fit), [relevant[i] for i in fit], k, FusionRule(m))[0]
                scores.append(fused_ndcg(inputs.take(score), w, [relevant[i] for i in score], k))
            held_out[m] = float(np.mean(np.concatenate(scores)))
        either = choose_weights(inputs, relevant, k, FusionRule("either"))[0]
        winner = "softmax" if held_out["softmax"] > held_out["grid"] else "grid"
        assert fitted["grid"].tolist() != fitted["softmax"].tolist()
        assert either.tolist() == fitted[winner].tolist(), (k, held_out)
        winners.add(winner)
    assert winners == {"grid", "softmax"}


def test_fusion_bagged_is_the_median_of_the_ascents_on_bootstrap_resamples():
    from monorec.evaluation.fusion import BAGS, SOURCE_WEIGHTS, FusionRule, choose_weights

    inputs, relevant = _lexical_knows_a_third()
    bagged = choose_weights(inputs, relevant, 3, FusionRule("bagged"))[0]
    chosen = []
    for b in range(BAGS):
        rows = np.random.default_rng(b).integers(0, len(relevant), len(relevant))
        chosen.append(choose_weights(inputs.take(rows), [relevant[i] for i in rows], 3)[0])
    assert bagged.tolist() == torch.stack(chosen).median(dim=0).values.tolist()
    assert all(w in SOURCE_WEIGHTS for w in bagged.tolist())  # a vote among the grid's values, odd BAGS
    assert choose_weights(inputs, relevant, 3, FusionRule("bagged"))[0].tolist() == bagged.tolist()  # seeded
    # what every resample agrees on stays: the lexical source knows a third of the answers
    assert bagged[1] > 0
    # a source helping 30 requests of 40 wins in every resample
    inputs, relevant = _fusion_case(40, helped=30)
    assert choose_weights(inputs, relevant, 1, FusionRule("bagged"))[0][1] > 0
