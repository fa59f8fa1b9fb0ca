import numpy as np
import polars as pl

from monorec.data.features import MISSING_INDEX, UNKNOWN_INDEX, Featurizer
from monorec.data.text_hashing import hash_texts, tokenize


def test_tokenize_words_then_trigrams():
    assert tokenize("Robot, NIGHT!")[:2] == ["robot", "night"]
    assert "#ro" in tokenize("robot") and "ot#" in tokenize("robot")
    assert tokenize("") == []


def test_hashing_is_stable_and_padded():
    a = hash_texts(["galaxy robot", None, ""], buckets=1000, max_tokens=6)
    assert a.shape == (3, 6)
    assert (a[1] == 0).all() and (a[2] == 0).all()
    assert (a[0] > 0).all() and (a[0] < 1000).all()
    # crc32, not Python's salted hash(): the same across processes (pinned value)
    assert hash_texts(["robot"], 1000, 1)[0, 0] == 1 + __import__("zlib").crc32(b"robot") % 999


def test_fit_uses_train_only_and_round_trips(tmp_path, config, prepared):
    train = prepared.rows("train")
    test = prepared.rows("test")
    fz = Featurizer(config).fit(train, prepared.catalogue)
    fz.save(tmp_path / "f.json")
    loaded = Featurizer.load(config, tmp_path / "f.json")
    for frame in (train.head(200), test.head(200)):
        a, b = fz.transform_context(frame), loaded.transform_context(frame)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(fz.transform_labels(frame), loaded.transform_labels(frame))
    ia, ib = fz.transform_catalogue(prepared.catalogue), loaded.transform_catalogue(prepared.catalogue)
    for k in ("entity", "entity_type", "categories", "title", "numeric"):
        np.testing.assert_array_equal(getattr(ia, k), getattr(ib, k))
    # users first seen after the training period are unknown (cold start), never a fitted index
    train_users = set(train["user_id"].drop_nulls().to_list())
    new = test.filter(~pl.col("user_id").is_in(list(train_users)) & pl.col("user_id").is_not_null())
    if new.height:
        assert (fz.transform_context(new)["user_id"] == UNKNOWN_INDEX).all()


def test_sentinels_unknown_and_numeric_missing(config, prepared):
    fz = Featurizer(config).fit(prepared.rows("train"), prepared.catalogue)
    frame = pl.DataFrame(
        {
            "task_type": ["home", "search"],
            "user_id": ["never-seen", None],
            "hour": [12.0, None],
            "query": [None, "galaxy robot"],
        }
    )
    ctx = fz.transform_context(frame)
    assert ctx["user_id"].tolist() == [UNKNOWN_INDEX, MISSING_INDEX]
    assert ctx["country"].tolist() == [MISSING_INDEX, MISSING_INDEX]  # absent column -> sentinel
    assert ctx["hour"].shape == (2, 2) and ctx["hour"][1].tolist() == [0.0, 1.0]  # (value, missing flag)
    assert ctx["task_type"].tolist() == [0, 2]
    assert (ctx["query"][0] == 0).all() and (ctx["query"][1] > 0).any()


def test_regression_labels_are_standardized_on_train(config, prepared):
    train = prepared.rows("train")
    fz = Featurizer(config).fit(train, prepared.catalogue)
    j = [o.name for o in config.objectives].index("watch")
    y = fz.transform_labels(train)[:, j]
    observed = y[~np.isnan(y)]
    assert abs(observed.mean()) < 1e-3 and abs(observed.std() - 1) < 1e-2


def test_entities_seen_only_as_negatives_stay_unknown(config, prepared):
    train = prepared.rows("train")
    fz = Featurizer(config).fit(train, prepared.catalogue)
    responded = set(train.filter(pl.col("clicked") == 1)["entity_id"].to_list())
    assert set(fz.entity_vocab_) == responded
    only_shown = set(train["entity_id"].to_list()) - responded
    if only_shown:
        frame = prepared.catalogue.filter(pl.col("entity_id").is_in(list(only_shown)))
        assert (fz.transform_catalogue(frame).entity == UNKNOWN_INDEX).all()


def test_id_list_features_use_the_shared_vocabulary(config, prepared):
    import dataclasses

    from monorec.config import FieldSpec

    cfg = dataclasses.replace(
        config, fields=(*config.fields, FieldSpec("history", "id_list", vocabulary="entity", max_tokens=3))
    )
    fz = Featurizer(cfg).fit(prepared.rows("train"), prepared.catalogue)
    known = fz.entity_vocab_[:4]
    frame = pl.DataFrame({"task_type": ["home", "home"], "history": ["|".join(known), None]})
    hist = fz.transform_context(frame)["history"]
    assert hist.shape == (2, 3)
    assert hist[0].tolist() == [fz.entity_vocab_.index(e) + 2 for e in known[1:]]  # the 3 most recent
    assert (hist[1] == 0).all()


def test_record_path_equals_the_frame_path(config, prepared):
    """The serving path (records, no DataFrame) gives exactly the training path's arrays."""
    from monorec.schema import ContextSchema

    featurizer = Featurizer(config).fit(prepared.rows("train"), prepared.catalogue)
    schema = ContextSchema.from_config(config)
    rng = np.random.default_rng(0)
    train = prepared.rows("train")
    users = [*train["user_id"].drop_nulls().unique().sort().to_list()[:20], "nobody", None]
    items = [*prepared.catalogue["entity_id"].to_list()[:20], "ghost"]
    records = []
    for i in range(60):
        canvas = config.canvas_names[i % len(config.canvas_names)]
        context = {
            "user_id": users[rng.integers(len(users))],
            "country": ["us", "fr", "zz", None][i % 4],
            "source_item_id": items[rng.integers(len(items))],
            "query": ["space robot", "", None, "Ünïcode words 42"][i % 4],
            "category": ["drama", "nothing", None][i % 3],
            "hour": [None, 3.0, 23.5][i % 3],
        }
        records.append(schema.normalize(canvas, context))
    kinds = {f.name: f.kind for f in schema.fields}
    frame = pl.DataFrame(
        {n: [r[n] for r in records] for n in [*schema.field_names, "task_type"]},
        schema={n: pl.Float64 if kinds.get(n) == "numeric" else pl.String for n in [*schema.field_names, "task_type"]},
    )
    fast, slow = featurizer.transform_records(records), featurizer.transform_context(frame)
    assert fast.keys() == slow.keys()
    for name in fast:
        np.testing.assert_array_equal(fast[name], slow[name], err_msg=name)
    assert (fast["user_id"] == UNKNOWN_INDEX).any() and (fast["user_id"] == MISSING_INDEX).any()


def test_a_few_entities_are_featurized_as_a_whole_catalogue_is(config, prepared):
    """A streamed batch (dict look-ups) and a bulk page (polars expressions) give the same item arrays."""
    featurizer = Featurizer(config).fit(prepared.rows("train"), prepared.catalogue)
    known = prepared.catalogue.head(30)
    odd = pl.DataFrame(
        {
            "entity_id": ["ghost", None, known["entity_id"][0], "ghost"],
            "entity_type": ["movie", "spaceship", None, "series"],
            "title": ["Space Robot", None, "", "Ünïcode 42"],
            "categories": [None, "", "|drama||nothing|a|b|c|d", "drama|drama"],
        }
    )
    for frame in (known, pl.concat([known.select(odd.columns), odd])):
        few, many = featurizer._transform_few_entities(frame), featurizer._transform_many_entities(frame)
        for name in ("entity", "entity_type", "categories", "title", "numeric"):
            np.testing.assert_array_equal(getattr(few, name), getattr(many, name), err_msg=name)
    assert (few.entity == UNKNOWN_INDEX).any() and (few.entity == MISSING_INDEX).any()
    assert (few.categories == UNKNOWN_INDEX).any() and (few.categories[-2] > 0).all()  # 4 kept of 6
