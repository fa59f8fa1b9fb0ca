"""Congruence tests of the lexical index's backends: tantivy (embedded) and BM25 sparse vectors in a Qdrant
collection (qdrant-client's local mode), driven as a deployed version drives them (the vector index writes
an entity's point, the lexical index then its document; the vector index's delete removes both)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from monorec.config import IndexSpec
from monorec.errors import ArtifactError
from monorec.index import EntityRows, create_index
from monorec.retrieval import LexicalIndex
from monorec.retrieval.lexical import LexicalSource
from monorec.retrieval.lexical_backends import create_lexical, load_lexical
from monorec.retrieval.qdrant_lexical import average_lengths

TITLES = {
    "a": ("Robot Nebula Of", "scifi"),
    "b": ("Space Robot", "scifi|kids"),
    "c": ("Laugh Party", "comedy"),
    "d": ("The Robot Robot", "comedy"),
}


class Version:
    """An index and a lexical index written in a version's order."""

    def __init__(self, spec: IndexSpec, root: Path, sample: Sequence[tuple[str, str]]) -> None:
        import polars as pl

        self.spec, self.root = spec, root
        self.index = create_index(spec, 4, name=f"t{abs(hash(str(root))) % 10**8}", root=root)
        frame = pl.DataFrame({"title": [t for t, _ in sample], "categories": [c for _, c in sample]})
        self.lexical: LexicalSource = create_lexical(spec, self.index, root / "lexical", lambda: frame)
        self.revision = 0

    def upsert(self, docs: dict[str, tuple[str, str]]) -> None:
        self.revision += 1
        ids = list(docs)
        rows = EntityRows(
            ids=ids,
            types=["movie"] * len(ids),
            categories=[tuple(docs[i][1].split("|")) for i in ids],
            revisions=np.full(len(ids), self.revision, dtype=np.int64),
            vectors=np.ones((len(ids), 4), dtype=np.float32),
        )
        self.index.upsert(rows)
        self.lexical.upsert(ids, [docs[i][0] for i in ids], [docs[i][1] for i in ids])

    def delete(self, ids: list[str]) -> None:
        self.revision += 1
        removed = [e for e in ids if self.index.delete([e], [self.revision])]
        self.lexical.delete(removed)


@pytest.fixture(params=["tantivy", "qdrant"])
def version(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Version]:
    spec = IndexSpec(kind="qdrant", lexical="qdrant") if request.param == "qdrant" else IndexSpec()
    v = Version(spec, tmp_path, list(TITLES.values()))
    v.upsert(TITLES)
    yield v
    v.lexical.close()
    v.index.drop()


def test_lexical_search_ranks_by_bm25_and_matches_case_insensitively(version: Version) -> None:
    index = version.lexical
    hits = index.search(["space ROBOT"], 10)[0]
    assert hits[0][0] == "b"  # both terms
    assert {e for e, _ in hits} == {"a", "b", "d"}  # every title with "robot", nothing else
    assert all(s > 0 for _, s in hits) and [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert index.search(["comedy"], 10)[0][0][0] in {"c", "d"}  # categories are searched too
    assert index.search(["zzz", "", None], 10) == [[], [], []]


def test_a_query_is_never_parsed_as_query_syntax(version: Version) -> None:
    for text in ["title:robot", "-robot AND (", 'robot" OR *', "entity_id:a"]:
        found = {e for e, _ in version.lexical.search([text], 10)[0]}
        assert found <= {"a", "b", "d"}  # words are terms; "-", ":", "(" are not operators


def test_upsert_replaces_and_delete_removes(version: Version) -> None:
    index = version.lexical
    version.upsert({"b": ("Ocean Dream", "")})
    assert "b" not in {e for e, _ in index.search(["robot"], 10)[0]}
    assert index.search(["ocean"], 10)[0][0][0] == "b"
    assert len(index) == 4 and index.holds("b")  # replaced, not added twice
    version.delete(["a", "unknown"])
    assert {e for e, _ in index.search(["robot"], 10)[0]} == {"d"}
    assert len(index) == 3 and not index.holds("a")


def test_tantivy_upserts_replace_uncommitted_documents_and_the_last_of_an_id_in_a_batch_wins(tmp_path: Path) -> None:
    # a bulk page's writes are one delete of the page's ids, then the adds: a delete covers every document
    # added before it, committed or not, and none added after it
    index = LexicalIndex(tmp_path / "lexical")
    index.upsert(["a", "b"], ["Robot Nebula", "Space Robot"], ["scifi", "scifi"], commit=False)
    index.upsert(["a", "c", "a"], ["Ocean Dream", "Laugh Party", "Ocean Storm"], ["", "comedy", ""], commit=False)
    index.delete(["b", "b"], commit=False)
    index.commit()
    assert index.ids() == {"a", "c"} and len(index) == 2
    assert [e for e, _ in index.search(["storm"], 5)[0]] == ["a"]
    assert index.search(["robot"], 5)[0] == [] and index.search(["dream"], 5)[0] == []
    index.upsert(["c"], ["Robot Party"], ["comedy"])  # one id: replaced over a committed document
    assert index.ids() == {"a", "c"} and [e for e, _ in index.search(["robot"], 5)[0]] == ["c"]
    index.close()


def test_a_saved_lexical_index_reopens_with_its_documents(version: Version, tmp_path: Path) -> None:
    version.lexical.save(tmp_path / "checkpoint")
    # after the checkpoint: tantivy's copy is without it, Qdrant's collection (like its dense vectors) has it;
    # the log's replay from the checkpoint's offset makes both whole
    version.upsert({"e": ("Nebula Late", "")})
    version.lexical.close()
    reopened = load_lexical(version.spec, tmp_path / "checkpoint", version.index, tmp_path / "lexical", 4)
    found = {e for e, _ in reopened.search(["nebula"], 5)[0]}
    assert found == ({"a", "e"} if version.spec.lexical == "qdrant" else {"a"})
    version.lexical = reopened
    with pytest.raises(ArtifactError, match="lexical index missing"):
        load_lexical(version.spec, tmp_path / "nothing", version.index, tmp_path / "lexical2", 4)


def test_a_closed_tantivy_index_refuses_writes_and_a_checkpoint_of_dropped_writes(tmp_path: Path) -> None:
    # a loader outliving its version's close must fail loudly: its uncommitted writes were dropped with the
    # writer, so a checkpoint taken now would record the index's offset without them
    index = LexicalIndex(tmp_path / "work")
    index.upsert(["a"], ["Robot Nebula"], [""])
    index.upsert(["b"], ["Ocean Dream"], [""], commit=False)
    index.close()
    with pytest.raises(RuntimeError, match="closed"):
        index.save(tmp_path / "checkpoint")
    with pytest.raises(RuntimeError, match="closed"):
        index.upsert(["c"], ["Late"], [""])
    assert index.ids() == {"a"}


def test_a_tantivy_checkpoint_that_disagrees_with_its_vector_index_fails(tmp_path: Path) -> None:
    index = LexicalIndex(tmp_path / "work")
    index.upsert(list(TITLES), [t for t, _ in TITLES.values()], [c for _, c in TITLES.values()])
    index.save(tmp_path / "checkpoint")
    index.close()
    with pytest.raises(ArtifactError, match="holds 4 entities, the checkpoint 5"):
        load_lexical(IndexSpec(), tmp_path / "checkpoint", None, tmp_path / "work", 5)  # type: ignore[arg-type]


def test_qdrant_sparse_bm25_scores_as_tantivy_does(tmp_path: Path) -> None:
    # the same documents and queries in both backends: the same scores, so the same results up to the
    # order of exact ties (the average field lengths given to Qdrant are the corpus's, as tantivy's are)
    rng = random.Random(0)
    words = [f"w{i}" for i in range(60)]
    zipf = [1 / (j + 1) for j in range(60)]
    cats = ["drama", "comedy", "horror", "sci-fi"]
    docs = {
        f"e{i}": (" ".join(rng.choices(words, weights=zipf, k=rng.randint(1, 6))), "|".join(rng.sample(cats, i % 3)))
        for i in range(400)
    }
    qdrant = Version(IndexSpec(kind="qdrant", lexical="qdrant"), tmp_path / "q", list(docs.values()))
    tantivy = Version(IndexSpec(), tmp_path / "t", [])
    for v in (qdrant, tantivy):
        v.upsert(docs)
    t_avg = average_lengths([t for t, _ in docs.values()], [c for _, c in docs.values()])
    assert qdrant.lexical.average == pytest.approx(t_avg)  # type: ignore[attr-defined]
    queries = [
        " ".join(rng.sample(words, rng.randint(1, 3))) + rng.choice(["", " drama", " Sci-Fi"]) for _ in range(60)
    ]
    for query, got, want in zip(
        queries, qdrant.lexical.search(queries, 10), tantivy.lexical.search(queries, 10), strict=True
    ):
        assert len(got) == len(want) and got, query
        assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-4), query
        scores = dict(want)
        for entity, score in got:  # a tie at the cut may pick another entity; one that is shared agrees
            if entity in scores:
                assert score == pytest.approx(scores[entity], rel=1e-4), (query, entity)
    qdrant.index.drop()


def test_a_restored_tantivy_index_shares_the_checkpoints_files_and_never_writes_into_them(tmp_path: Path) -> None:
    import hashlib

    index = LexicalIndex(tmp_path / "owner")
    index.upsert(list(TITLES), [t for t, _ in TITLES.values()], [c for _, c in TITLES.values()])
    index.save(tmp_path / "checkpoint")
    index.close()

    def files(folder: Path) -> dict[str, str]:
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}

    saved = files(tmp_path / "checkpoint")
    restored = LexicalIndex.restore(tmp_path / "checkpoint", tmp_path / "replica")
    segment = next(f for f in (tmp_path / "checkpoint").iterdir() if f.name != "meta.json")
    assert (tmp_path / "replica" / segment.name).stat().st_ino == segment.stat().st_ino  # linked, not copied
    for i in range(30):  # commits, new segments, merges and their garbage collection in the working copy
        restored.upsert([f"n{i}", "a"], [f"Nebula {i}", f"Renamed {i}"], ["", ""])
    restored.delete(["b"])
    assert {e for e, _ in restored.search(["renamed"], 5)[0]} == {"a"}
    restored.close()
    assert files(tmp_path / "checkpoint") == saved  # the checkpoint still holds what it held
    again = LexicalIndex.restore(tmp_path / "checkpoint", tmp_path / "again")
    assert len(again) == len(TITLES) and not {e for e, _ in again.search(["renamed"], 5)[0]}
    again.close()


def test_a_commit_returns_only_once_every_committed_write_is_searchable(tmp_path: Path) -> None:
    """Two committers (a paced commit's timer and a checkpoint): the one that finds nothing left to commit
    must not return while the other's commit is written but not yet visible to searches."""
    import threading
    import time

    lexical = LexicalIndex(tmp_path / "lexical")
    lexical.upsert(["a"], ["Alpha"], [""], commit=False)

    class SlowReload:  # the first committer's reload takes a while
        def __init__(self, index: object) -> None:
            self._index, self.entered = index, threading.Event()

        def reload(self) -> None:
            self.entered.set()
            time.sleep(0.3)
            self._index.reload()  # type: ignore[attr-defined]

        def __getattr__(self, name: str) -> object:
            return getattr(self._index, name)

    slow = SlowReload(lexical.index)
    lexical.index = slow  # type: ignore[assignment]
    first = threading.Thread(target=lexical.commit)
    first.start()
    assert slow.entered.wait(5)
    lexical.commit()  # nothing dirty any more: returns, but only once "a" is searchable
    assert lexical.holds("a")
    first.join()
