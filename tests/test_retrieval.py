"""Candidate sources: the lexical index (tantivy), the co-occurrence table, and their union in evaluation."""

import dataclasses
from collections import Counter, defaultdict

import numpy as np
import polars as pl
import pytest

from monorec.config import load_config, parse_config
from monorec.errors import ArtifactError, ConfigError
from monorec.evaluation.evaluate import request_sets
from monorec.evaluation.recommenders import ModelRecommender
from monorec.pipeline import default_config
from monorec.popular import PopularLists
from monorec.retrieval import CandidateSources, CooccurrenceTable, LexicalIndex

TITLES = {
    "a": ("Robot Nebula Of", "scifi"),
    "b": ("Space Robot", "scifi|kids"),
    "c": ("Laugh Party", "comedy"),
    "d": ("The Robot Robot", "comedy"),
}


def _index(path=None) -> LexicalIndex:
    index = LexicalIndex(path)
    ids = list(TITLES)
    index.upsert(ids, [TITLES[i][0] for i in ids], [TITLES[i][1] for i in ids])
    return index


def test_lexical_search_ranks_by_bm25_and_matches_case_insensitively():
    index = _index()
    hits = index.search(["space ROBOT"], 10)[0]
    assert hits[0][0] == "b"  # both terms
    assert {e for e, _ in hits} == {"a", "b", "d"}  # every title with "robot", nothing else
    assert all(s > 0 for _, s in hits) and [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert index.search(["comedy"], 10)[0][0][0] in {"c", "d"}  # categories are searched too
    assert index.search(["zzz", "", None], 10) == [[], [], []]


def test_a_query_is_never_parsed_as_query_syntax():
    index = _index()
    for text in ["title:robot", "-robot AND (", 'robot" OR *', "entity_id:a"]:
        found = {e for e, _ in index.search([text], 10)[0]}
        assert found <= {"a", "b", "d"}  # words are terms; "-", ":", "(" are not operators


def test_upsert_replaces_and_delete_removes():
    index = _index()
    index.upsert(["b"], ["Ocean Dream"], [""])
    assert "b" not in {e for e, _ in index.search(["robot"], 10)[0]}
    assert index.search(["ocean"], 10)[0][0][0] == "b"
    assert len(index) == 4  # replaced, not added twice
    index.delete(["a", "unknown"])
    assert {e for e, _ in index.search(["robot"], 10)[0]} == {"d"}
    assert len(index) == 3


def test_an_on_disk_index_reopens_with_its_documents(tmp_path):
    index = _index(tmp_path / "lexical")
    index.close()
    reopened = LexicalIndex(tmp_path / "lexical")
    assert len(reopened) == 4 and reopened.search(["nebula"], 5)[0][0][0] == "a"


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


def test_config_refuses_unknown_sources_and_sources_without_input():
    raw = load_config(default_config("synthetic")).to_dict()
    raw["canvases"]["home"]["sources"] = {"lexical": 10, "magic": 5, "embedding": 0}
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    text = str(err.value)
    assert "canvases.home.sources.magic" in text and "unknown source" in text
    assert "canvases.home.sources.lexical" in text and "no text field" in text
    assert "canvases.home.sources.embedding" in text


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
