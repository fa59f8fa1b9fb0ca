"""Congruence tests: every index backend (faiss exact, faiss HNSW, hnswlib, Qdrant local mode) against the same
brute-force model of what the index should hold and answer."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from monorec.config import IndexSpec
from monorec.errors import ArtifactError
from monorec.index import EntityFilter, EntityRows, create_index, load_index, save_index

DIM = 16
TYPES = ("movie", "series")
CATS = ("a", "b", "c", "d")

BACKENDS = {
    "exact": IndexSpec(kind="exact", exact_below=50),
    # a tiny exact_below sends filtered searches through the graph with a selector (and its fallback)
    "hnsw": IndexSpec(kind="hnsw", hnsw_m=16, ef_construction=100, ef_search=128, exact_below=5),
    "hnswlib": IndexSpec(kind="hnswlib", hnsw_m=16, ef_construction=100, ef_search=128, exact_below=5),
    "qdrant": IndexSpec(kind="qdrant"),
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    spec = BACKENDS[request.param]
    name = f"t{abs(hash(str(tmp_path))) % 10**8}"
    index = create_index(spec, DIM, name=name, root=tmp_path)
    yield spec, index, name
    index.drop()


def clustered(n: int, seed: int) -> np.ndarray:
    """Embedding-like unit vectors: clusters, not isotropic noise (graph indexes need structure)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, DIM))
    x = centres[rng.integers(0, 8, n)] + 0.4 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def entities(n: int, seed: int = 0, revision: int = 1, prefix: str = "e") -> EntityRows:
    rng = np.random.default_rng(seed + 100)
    return EntityRows(
        ids=[f"{prefix}{i}" for i in range(n)],
        types=[TYPES[i % 2] for i in range(n)],
        categories=[tuple(sorted({CATS[rng.integers(0, 4)], CATS[rng.integers(0, 4)]})) for _ in range(n)],
        revisions=np.full(n, revision, dtype=np.int64),
        vectors=clustered(n, seed),
    )


class Model:
    """What the index should hold: id -> (type, categories, revision, vector), plus tombstones."""

    def __init__(self) -> None:
        self.live: dict[str, tuple[str, tuple[str, ...], int, np.ndarray]] = {}
        self.applied: dict[str, int] = {}

    def upsert(self, rows: EntityRows) -> None:
        for i, e in enumerate(rows.ids):
            r = int(rows.revisions[i])
            if r > self.applied.get(e, -1):
                self.applied[e] = r
                self.live[e] = (rows.types[i], tuple(rows.categories[i]), r, rows.vectors[i])

    def delete(self, ids: list[str], revisions: list[int]) -> None:
        for e, r in zip(ids, revisions, strict=True):
            if r > self.applied.get(e, -1):
                self.applied[e] = r
                self.live.pop(e, None)

    def top_k(self, q: np.ndarray, k: int, where: EntityFilter | None = None) -> list[str]:
        ok = [
            e
            for e, (t, c, _, _) in self.live.items()
            if (where is None or where.entity_types is None or t in where.entity_types)
            and (where is None or where.categories is None or set(c) & set(where.categories))
        ]
        scores = {e: float(self.live[e][3] @ q) for e in ok}
        return sorted(ok, key=lambda e: (-scores[e], e))[:k]


def recall(got: list[str], want: list[str]) -> float:
    return len(set(got) & set(want)) / max(1, len(want))


def check_answers(index, model: Model, queries: np.ndarray, k: int, where: EntityFilter | None, exact: bool) -> None:  # type: ignore[no-untyped-def]
    hits = index.search(queries, k, where)
    for q in range(len(queries)):
        got = [e for e, _ in hits.row(q)]
        want = model.top_k(queries[q], k, where)
        assert len(got) == len(want), "a search returned fewer hits than its filter admits"
        assert len(set(got)) == len(got)
        for e in got:
            t, c, _, _ = model.live[e]
            assert where is None or where.entity_types is None or t in where.entity_types
            assert where is None or where.categories is None or set(c) & set(where.categories)
        if exact:
            assert recall(got, want) == 1.0
        scores = [s for _, s in hits.row(q)]
        assert scores == sorted(scores, reverse=True)


def test_search_matches_brute_force_with_and_without_filters(backend) -> None:  # type: ignore[no-untyped-def]
    spec, index, _ = backend
    rows = entities(400)
    model = Model()
    assert index.upsert(rows) == 400
    model.upsert(rows)
    assert len(index) == 400
    queries = clustered(20, seed=7)
    exact = spec.kind != "hnsw"
    check_answers(index, model, queries, 10, None, exact)
    check_answers(index, model, queries, 10, EntityFilter(entity_types=("series",)), exact)
    check_answers(index, model, queries, 10, EntityFilter(categories=("d",)), exact)
    check_answers(index, model, queries, 10, EntityFilter(entity_types=("movie",), categories=("a", "b")), exact)
    if spec.kind == "hnsw":  # approximate, but on clustered data nearly exact
        hits = index.search(queries, 10)
        mean = np.mean([recall([e for e, _ in hits.row(q)], model.top_k(queries[q], 10)) for q in range(20)])
        assert mean >= 0.95


def test_a_filter_admitting_fewer_than_k_returns_exactly_those(backend) -> None:  # type: ignore[no-untyped-def]
    _, index, _ = backend
    rows = entities(300)
    index.upsert(rows)
    index.upsert(
        EntityRows(["rare1", "rare2"], ["movie", "movie"], [("zz",), ("zz",)], np.array([1, 1]), clustered(2, 9))
    )
    hits = index.search(clustered(3, seed=3), 10, EntityFilter(categories=("zz",)))
    for q in range(3):
        assert sorted(e for e, _ in hits.row(q)) == ["rare1", "rare2"]
    nothing = index.search(clustered(3, 3), 5, EntityFilter(entity_types=("nope",)))
    assert all(not nothing.row(q) for q in range(3))


def test_revisions_are_idempotent_and_never_go_back(backend) -> None:  # type: ignore[no-untyped-def]
    _, index, _ = backend
    index.upsert(entities(50, revision=5))
    assert index.upsert(entities(50, revision=5)) == 0  # replay: nothing applied
    assert index.upsert(entities(50, seed=1, revision=4)) == 0  # older: ignored
    moved = entities(1, seed=2, revision=6)
    assert index.upsert(moved) == 1
    assert np.allclose(index.vectors_of(["e0"])[0], moved.vectors[0], atol=1e-6)
    top = index.search(moved.vectors[:1], 1).row(0)
    assert top[0][0] == "e0" and top[0][1] == pytest.approx(1.0, abs=1e-5)

    assert index.delete(["e1", "e2"], [3, 9]) == 1  # e1's delete is older than its revision 5
    assert index.upsert(entities(3, revision=8)) == 0 or "e2" not in index.revisions()  # no resurrection
    assert "e2" not in index.revisions() and "e1" in index.revisions()
    assert index.upsert(entities(3, revision=10)) == 3  # a newer upsert brings e2 back
    assert index.revisions()["e2"] == 10 and len(index) == 50


def test_current_rows_name_the_rows_that_are_the_state_now(backend) -> None:  # type: ignore[no-untyped-def]
    # what a version's lexical index and features follow (CONTRIBUTING rule 16), in every backend
    _, index, _ = backend
    index.upsert(entities(3, revision=5))  # e0, e1, e2 at 5
    index.delete(["e1"], [7])
    ids = ["e0", "e0", "e1", "e1", "e2", "unknown"]
    revisions = np.array([5, 4, 5, 7, 6, 1])
    assert index.current_rows(ids, revisions) == [0]  # e0 live at 5; e1 deleted; e2 is at 5, not 6
    assert index.current_rows(ids, revisions, deleted=True) == [3]  # e1's tombstone at 7
    index.upsert(entities(3, revision=8))  # an upsert after the delete brings e1 back
    assert index.current_rows(["e1", "e1"], np.array([7, 8])) == [1]
    assert index.current_rows(["e1"], np.array([7]), deleted=True) == []


@pytest.mark.parametrize("write_chunk", [None, 3])  # 3: a streamed batch written a few rows per hold of the lock
def test_random_operations_match_the_model(backend, write_chunk: int | None) -> None:  # type: ignore[no-untyped-def]
    spec, index, _ = backend
    rng = np.random.default_rng(11)
    model = Model()
    for step in range(30):
        n = int(rng.integers(1, 40))
        ids = [f"e{i}" for i in rng.integers(0, 120, n)]
        revisions = rng.integers(0, 25, n).astype(np.int64)
        if rng.random() < 0.7:
            rows = EntityRows(
                ids=ids,
                types=[TYPES[int(rng.integers(0, 2))] for _ in ids],
                categories=[(CATS[int(rng.integers(0, 4))],) for _ in ids],
                revisions=revisions,
                vectors=clustered(n, seed=step),
            )
            index.upsert(rows, write_chunk=write_chunk)
            model.upsert(rows)
        else:
            index.delete(ids, revisions.tolist())
            model.delete(ids, revisions.tolist())
    assert index.revisions() == {e: v[2] for e, v in model.live.items()}
    assert len(index) == len(model.live)
    check_answers(index, model, clustered(10, seed=99), 8, None, spec.kind != "hnsw")
    check_answers(index, model, clustered(10, seed=98), 8, EntityFilter(categories=("b",)), spec.kind != "hnsw")


class CountingLock:
    """A lock that counts how often it is taken (what a search waits for is one hold)."""

    def __init__(self) -> None:
        self.lock, self.holds = threading.Lock(), 0

    def __enter__(self) -> None:
        self.lock.acquire()
        self.holds += 1

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


@pytest.mark.parametrize("kind", ["exact", "hnsw", "hnswlib"])
def test_a_chunked_upsert_holds_the_lock_once_per_chunk(kind: str, tmp_path: Path) -> None:
    # a search of a serving version waits for one chunk of a streamed batch, not for all of it: the lock is
    # taken once per chunk, and the index holds whole chunks only at each of them
    index = create_index(BACKENDS[kind], DIM, name="chunks", root=tmp_path)
    lock = index._lock = CountingLock()  # type: ignore[assignment]
    held_before: list[int] = []
    add = index._add

    def add_and_count(vectors: np.ndarray) -> None:
        held_before.append(len(index))
        add(vectors)

    index._add = add_and_count  # type: ignore[method-assign]
    assert index.upsert(entities(10), write_chunk=4) == 10
    assert (lock.holds, held_before) == (3, [0, 4, 8])
    assert index.upsert(entities(10, prefix="f")) == 10  # no chunks: one hold, one insert
    assert (lock.holds, held_before) == (4, [0, 4, 8, 10])
    assert len(index) == 20 and index.search(clustered(1, 5), 20).row(0)


@pytest.mark.parametrize("kind", ["exact", "hnsw", "hnswlib"])
def test_a_save_lets_searches_in_and_keeps_writes_out(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a loader's checkpoint serialises the store (~50-100 ms at 100k rows): every search of the version
    # waited for it, and a request's p90 during checkpoints was 117 ms (B5's switch windows). Searches only
    # read, so they go on; a write waits, so the snapshot is of one moment
    spec = BACKENDS[kind]
    index = create_index(spec, DIM, name="s", root=tmp_path)
    index.upsert(entities(50))
    searched: list[str] = []
    writers: list[threading.Thread] = []
    wrote = threading.Event()
    dump = type(index)._dump_store

    def dump_while_others_run(self, path):  # type: ignore[no-untyped-def]
        searcher = threading.Thread(target=lambda: searched.append(index.search(clustered(1, 4), 5).row(0)[0][0]))
        writer = threading.Thread(target=lambda: (index.upsert(entities(5, prefix="late")), wrote.set()))
        searcher.start()
        writer.start()
        searcher.join(timeout=10)
        assert not searcher.is_alive(), "a search waited for a save"
        assert not wrote.wait(0.2), "a write ran during a save's copy"
        writers.append(writer)
        return dump(self, path)

    monkeypatch.setattr(type(index), "_dump_store", dump_while_others_run)
    save_index(index, tmp_path / "saved", spec=spec, meta={})
    monkeypatch.undo()
    writers[0].join(timeout=10)
    assert searched and wrote.is_set() and len(index) == 55
    loaded, _ = load_index(tmp_path / "saved", spec=spec, name="s2", root=tmp_path)
    assert len(loaded) == 50 and "late0" not in loaded.revisions()  # the save is of the moment before the write


def test_saved_index_answers_the_same_and_corruption_fails_loudly(backend, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec, index, name = backend
    index.upsert(entities(200))
    index.delete(["e3"], [2])
    before = index.search(clustered(5, seed=1), 10)
    path = tmp_path / "saved"
    save_index(index, path, spec=spec, meta={"offset": 42})
    loaded, manifest = load_index(path, spec=spec, name=name, root=tmp_path)
    assert manifest["offset"] == 42
    after = loaded.search(clustered(5, seed=1), 10)
    assert (before.ids == after.ids).all()
    assert loaded.revisions() == index.revisions() and "e3" not in loaded.revisions()
    assert loaded.upsert(entities(200)) == 0 and loaded.upsert(entities(4, revision=1)) == 0  # tombstone kept

    victim = next(p for p in sorted(path.iterdir()) if p.name != "manifest.json")
    victim.write_bytes(victim.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(ArtifactError, match="checksum"):
        load_index(path, spec=spec, name=name, root=tmp_path)
    victim.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_index(path, spec=spec, name=name, root=tmp_path)
    with pytest.raises(ArtifactError, match="missing"):
        load_index(tmp_path / "nowhere", spec=spec, name=name, root=tmp_path)


@pytest.mark.parametrize("kind", ["hnsw", "hnswlib"])
def test_graphs_compact_dead_rows_and_keep_answering(kind: str, tmp_path: Path) -> None:
    index = create_index(IndexSpec(kind=kind, compact_above=0.2, exact_below=0), DIM, name="c", root=tmp_path)  # type: ignore[arg-type]
    model = Model()
    for revision in range(1, 5):
        rows = entities(300, seed=revision, revision=revision)
        index.upsert(rows)
        model.upsert(rows)
    assert index._count() < 2 * 300  # type: ignore[attr-defined]  # rebuilt, not 1200 rows
    check_answers(index, model, clustered(10, seed=5), 10, EntityFilter(entity_types=("movie",)), exact=False)
    check_answers(index, model, clustered(10, seed=6), 10, None, exact=False)


@pytest.mark.parametrize("kind", ["exact", "hnsw", "hnswlib"])
def test_a_compaction_lets_searches_and_writes_in_and_keeps_what_they_wrote(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rebuilding a graph of 100k rows takes ~12 s: under the lock every search of the version would wait;
    # it runs outside it, and what other threads write meanwhile reaches the rebuilt store
    spec = IndexSpec(kind=kind, compact_above=0.2, exact_below=0)  # type: ignore[arg-type]
    index = create_index(spec, DIM, name="c", root=tmp_path)
    model = Model()
    first = entities(300, seed=1, revision=1)
    index.upsert(first)
    model.upsert(first)
    during: list[str] = []
    rebuild = type(index)._append

    def append(self, ids, types, cats, vectors):  # type: ignore[no-untyped-def]
        if self is not index and not during:  # the rebuild, on a copy, outside the lock: others go on
            late = entities(5, seed=9, revision=3, prefix="late")

            def others() -> None:
                during.append(index.search(clustered(1, 4), 5).row(0)[0][0])
                index.upsert(late)
                index.delete(["e7"], [9])

            probe = threading.Thread(target=others)
            probe.start()
            probe.join(timeout=10)
            assert not probe.is_alive(), "a search or a write waited for the compaction"
            model.upsert(late)
            model.delete(["e7"], [9])
        return rebuild(self, ids, types, cats, vectors)

    monkeypatch.setattr(type(index), "_append", append)
    second = entities(300, seed=2, revision=2)  # every row overwritten: more than 20% dead, a compaction
    index.upsert(second)
    model.upsert(second)
    assert during, "no compaction ran"
    # rebuilt from the 300 live rows, then the late writes carried in: 5 rows added, e7's row dead
    assert (index._count(), len(index), len(model.live)) == (305, 304, 304)  # type: ignore[attr-defined]
    assert index.revisions() == {e: v[2] for e, v in model.live.items()}
    check_answers(index, model, clustered(10, seed=5), 10, None, exact=kind != "hnsw")
    check_answers(index, model, clustered(10, seed=6), 10, EntityFilter(categories=("a",)), exact=kind != "hnsw")


def test_hnswlib_leaves_dead_rows_out_without_a_mask(tmp_path: Path) -> None:
    """Deleted and overwritten entities are marked deleted in hnswlib's graph: an unfiltered search takes
    the unmasked path and still never returns them."""
    index = create_index(IndexSpec(kind="hnswlib", compact_above=0.9), DIM, name="d", root=tmp_path)
    model = Model()
    rows = entities(400, seed=1)
    index.upsert(rows)
    model.upsert(rows)
    gone = list(rows.ids[:100])
    index.delete(gone, [2] * 100)
    model.delete(gone, [2] * 100)
    moved = entities(150, seed=9, revision=3).take(range(100, 150))  # overwritten: their old rows die
    index.upsert(moved)
    model.upsert(moved)
    masked = []
    real = index._search_masked  # type: ignore[attr-defined]
    index._search_masked = lambda *a: masked.append(1) or real(*a)  # type: ignore[attr-defined]
    queries = clustered(20, seed=4)
    check_answers(index, model, queries, 10, None, exact=False)
    assert not masked, "an unfiltered search with dead rows needed no mask"
    hits = index.search(queries, 10)
    assert not set(gone) & {e for q in range(len(queries)) for e, _ in hits.row(q)}


def test_ids_survive_a_save_and_load_exactly(backend, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Regression (issue 9.3): numpy's fixed-width strings dropped trailing NULs, so "zz\\x00" came back as
    "zz" after a restart while the catalogue kept "zz\\x00". Whatever an id holds, it survives as it is."""
    spec, index, name = backend
    odd = ["zz\x00", "\x00", "tab\tin", "é ü 東京", "trailing ", "a\x1fb"]
    rows = entities(len(odd))
    index.upsert(EntityRows(odd, rows.types, [("x\x00",), ()] * 3, rows.revisions, rows.vectors))
    save_index(index, tmp_path / "saved", spec=spec, meta={})
    loaded, _ = load_index(tmp_path / "saved", spec=spec, name=name, root=tmp_path)
    assert sorted(loaded.revisions()) == sorted(odd)
    assert {e for e, _ in loaded.search(rows.vectors, len(odd)).row(0)} == set(odd)


@pytest.mark.parametrize("n", [0, 1, 2047, 2048, 2049, 10_000])
def test_packed_strings_are_one_json_list_whatever_their_number(n: int) -> None:
    # packed a slice at a time (a waiting thread can take the GIL between slices), to the bytes of one json.dumps, so
    # every checkpoint written before still loads
    import json

    from monorec.artifacts import pack_strings, unpack_strings

    rng = np.random.default_rng(n)
    alphabet = ["a", "\x00", "é", '"', "\\", " ", "東", "\x1f"]
    strings = ["".join(rng.choice(alphabet, size=rng.integers(0, 6))) for _ in range(n)]
    packed = pack_strings(strings)
    assert packed.tobytes() == json.dumps(strings, ensure_ascii=False).encode("utf-8")
    assert unpack_strings(packed) == strings


def test_saves_after_writes_and_a_compaction_hold_every_row_written_since(backend, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # a save encodes only the rows and book entries that came after the last one: what it writes must
    # still be the whole index, after overwrites, deletes, new entities and a rebuild of the store
    spec, index, name = backend
    if hasattr(index, "params"):
        index.params["compact_above"] = 0.3
    model = Model()
    steps = [
        lambda: entities(40, seed=1),
        lambda: entities(10, seed=2, revision=2),  # overwrites e0..e9
        lambda: entities(15, seed=3, prefix="n"),
        lambda: entities(40, seed=4, revision=3),  # every e overwritten: a graph store compacts
    ]
    for step, make in enumerate(steps):
        rows = make()
        index.upsert(rows)
        model.upsert(rows)
        index.delete([f"n{step}"], [9])
        model.delete([f"n{step}"], [9])
        save_index(index, tmp_path / f"s{step}", spec=spec, meta={})
        loaded, _ = load_index(tmp_path / f"s{step}", spec=spec, name=name, root=tmp_path)
        assert loaded.revisions() == {e: v[2] for e, v in model.live.items()} == index.revisions()
        check_answers(loaded, model, clustered(5, seed=step), 5, None, exact=spec.kind != "hnsw")
        assert loaded.upsert(entities(1, prefix="n", revision=1)) == 0  # n0's tombstone (revision 9) was saved


def _saved_hnswlib(tmp_path: Path) -> tuple[Path, np.ndarray]:
    index = create_index(BACKENDS["hnswlib"], DIM, name="h", root=tmp_path)
    index.upsert(entities(300))
    index.delete(["e7"], [2])
    path = tmp_path / "saved"
    index.save(path)
    return path, index.search(clustered(5, seed=1), 10).ids


def test_an_hnswlib_checkpoint_of_the_older_layout_still_loads(tmp_path: Path) -> None:
    """Checkpoints before the state file hold hnswlib's own graph file and the vectors beside it."""
    from monorec.index.hnswlib_index import GRAPH_FILE, VECTORS_FILE, HnswlibIndex
    from monorec.index.hnswlib_state import GRAPH_STATE_FILE

    path, before = _saved_hnswlib(tmp_path)
    index = HnswlibIndex.load(path, DIM, **{"ef_search": 128, "exact_below": 5})
    index._graph.save_index(str(path / GRAPH_FILE))  # the older layout, written by the older code's calls
    np.save(path / VECTORS_FILE, index._vectors())
    (path / GRAPH_STATE_FILE).unlink()
    older = HnswlibIndex.load(path, DIM, **{"ef_search": 128, "exact_below": 5})
    assert (older.search(clustered(5, seed=1), 10).ids == before).all()
    np.testing.assert_array_equal(older.vectors_of(["e1", "e299"]), index.vectors_of(["e1", "e299"]))
    assert older.upsert(entities(2, seed=9, revision=3, prefix="new")) == 2 and len(older) == 301


@pytest.mark.parametrize(
    "damage",
    ["data_level0", "link_lists", "element_levels", "link_target", "link_count", "entry_point", "space"],
)
def test_an_hnswlib_state_that_disagrees_with_itself_is_an_error_not_a_crash(damage: str, tmp_path: Path) -> None:
    """hnswlib copies its state with no checks: a file that would make it read or write out of bounds (or
    follow a link to nowhere) must be refused before it gets there."""
    import json

    from monorec.index.hnswlib_index import HnswlibIndex
    from monorec.index.hnswlib_state import GRAPH_STATE_FILE

    path, _ = _saved_hnswlib(tmp_path)
    with np.load(path / GRAPH_STATE_FILE) as saved:
        arrays = {k: saved[k].copy() for k in saved.files}
    params = json.loads(str(arrays["params"]))
    rows = arrays["data_level0"].reshape(params["cur_element_count"], -1)
    if damage in ("data_level0", "link_lists"):
        arrays[damage] = arrays[damage][:-4]
    elif damage == "element_levels":
        arrays[damage][0] = params["max_level"] + 1
    elif damage == "link_target":
        rows[0, 4:8] = np.array([10**6], dtype=np.uint32).view(np.int8)
    elif damage == "link_count":
        rows[0, 0:4] = np.array([params["max_M0"] + 1], dtype=np.uint32).view(np.int8)
    elif damage == "entry_point":
        params["enterpoint_node"] = params["cur_element_count"]
    else:
        params["dim"] = DIM + 1
    arrays["params"] = np.array(json.dumps(params))
    np.savez(path / GRAPH_STATE_FILE, **arrays)
    with pytest.raises(ArtifactError, match="does not load"):
        HnswlibIndex.load(path, DIM)
