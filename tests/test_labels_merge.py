import dataclasses

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monorec.data.labels import SPLITS, prepare_labels
from monorec.data.merge import stratified_merge

CATALOGUE = pl.DataFrame(
    {
        "entity_id": [f"e{i}" for i in range(20)],
        "entity_type": ["movie"] * 20,
        "title": [f"title {i}" for i in range(20)],
        "categories": ["action"] * 20,
    }
)


@st.composite
def logs_strategy(draw):
    n = draw(st.integers(min_value=5, max_value=120))
    ts = draw(st.lists(st.integers(0, 50), min_size=n, max_size=n))
    canvases = draw(st.lists(st.sampled_from(["home", "related", "search", "browse"]), min_size=n, max_size=n))
    entities = draw(st.lists(st.integers(0, 24), min_size=n, max_size=n))  # some unknown to the catalogue
    users = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    clicks = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n))
    return pl.DataFrame(
        {
            "ts": ts,
            "canvas": canvases,
            "entity_id": [f"e{e}" for e in entities],
            "user_id": [f"u{u}" for u in users],
            "source_item_id": [f"e{e % 20}" for e in entities],
            "query": ["robot"] * n,
            "category": ["action"] * n,
            "clicked": clicks,
        }
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(logs=logs_strategy(), negatives=st.integers(0, 3), sampling=st.sampled_from(["uniform", "popularity"]))
def test_no_leakage_from_the_future(config, logs, negatives, sampling):
    """Every training row is strictly older than every validation row, itself older than every test row;
    sampled negatives stay in their positive's split and time."""
    cfg = dataclasses.replace(
        config,
        canvases=tuple(dataclasses.replace(c, negatives=negatives) for c in config.canvases),
        labels=dataclasses.replace(config.labels, negative_sampling=sampling),
    )
    labels = prepare_labels(logs, CATALOGUE, cfg)
    rows = pl.concat(list(labels.canvases.values()))
    first_valid, first_test = labels.cutoffs
    by_split = {s: rows.filter(pl.col("split") == s)["ts"] for s in SPLITS}
    assert (by_split["train"] < first_valid).all()
    assert ((by_split["valid"] >= first_valid) & (by_split["valid"] < first_test)).all()
    assert (by_split["test"] >= first_test).all()
    if len(by_split["train"]) and len(by_split["valid"]):
        assert by_split["train"].max() < by_split["valid"].min()
    if len(by_split["valid"]) and len(by_split["test"]):
        assert by_split["valid"].max() < by_split["test"].min()
    # nothing about unknown entities survives, and negatives never duplicate a logged positive
    assert rows["entity_id"].is_in(CATALOGUE["entity_id"].implode()).all()
    positives = rows.filter(pl.col("clicked") == 1).select("request_id", "entity_id")
    negs = rows.filter(pl.col("clicked") == 0).select("request_id", "entity_id")
    assert positives.join(negs, on=["request_id", "entity_id"], how="inner").height == 0 or negatives == 0


def test_cleaning_drops_bots_duplicates_and_unused_objectives(config, world):
    catalogue, logs = world
    labels = prepare_labels(logs, catalogue, config)
    total_dropped = {k: sum(v.get(k, 0) for v in labels.dropped.values()) for k in ("bot_rows", "duplicates")}
    assert total_dropped["bot_rows"] > 0 and total_dropped["duplicates"] > 0
    for frame in labels.canvases.values():
        assert not frame["user_id"].cast(pl.String).str.starts_with("bot").any()
        assert frame.select("request_id", "entity_id").is_unique().all()
    # search does not declare watch: its watch labels are masked (null), even though the log has them
    assert labels.canvases["search"]["watch_seconds"].null_count() == labels.canvases["search"].height
    assert labels.canvases["home"]["watch_seconds"].drop_nulls().len() > 0
    # related never sees a language, and gets the source title as its query
    related = labels.canvases["related"]
    assert related["language"].null_count() == related.height
    titles = dict(catalogue.select("entity_id", "title").iter_rows())
    assert related.select("source_item_id", "query").iter_rows().__next__()[1] == titles[related["source_item_id"][0]]


def test_merge_follows_the_configured_mixture(config):
    rng = np.random.default_rng(0)
    train = {
        c.name: pl.DataFrame({"canvas": [c.name] * n, "x": rng.random(n)})
        for c, n in zip(config.canvases, [5000, 300, 2000, 40], strict=True)
    }
    merged, record = stratified_merge(train, config, total_rows=4000, seed=1)
    mix_sum = sum(c.mix for c in config.canvases)
    assert merged.height == 4000
    for c in config.canvases:
        share = (merged["canvas"] == c.name).mean()
        assert abs(share - c.mix / mix_sum) < 1e-3
        assert record[c.name]["rows"] == (merged["canvas"] == c.name).sum()
        assert record[c.name]["replacement"] == (record[c.name]["rows"] > record[c.name]["available"])
    # a large canvas cannot drown a small one: browse (40 rows) is upsampled to its share
    assert record["browse"]["replacement"] and not record["home"]["replacement"]
    again, _ = stratified_merge(train, config, total_rows=4000, seed=1)
    assert again.equals(merged)


def test_prepared_manifest_records_mixture_and_counts(prepared, config):
    m = prepared.manifest
    assert set(m["mixture"]) == set(config.canvas_names)
    assert m["merged_rows"] == prepared.merged_train.height
    for canvas, counts in m["rows"].items():
        assert sum(counts.values()) == prepared.canvases[canvas].height


def test_popularity_negatives_follow_training_popularity_only(config):
    """Popularity weights come from the training period: an entity popular only in the test period
    is not favoured."""
    from monorec.data.labels import _negative_weights, _train_response_counts

    cfg = dataclasses.replace(config, labels=dataclasses.replace(config.labels, negative_sampling="popularity"))
    logs = pl.DataFrame(
        {
            "ts": [1, 2, 3, 100, 101, 102],
            "canvas": ["home"] * 6,
            "entity_id": ["e1", "e1", "e1", "e2", "e2", "e2"],
            "clicked": [1.0] * 6,
        }
    )
    w = _negative_weights(_train_response_counts(logs, cfg, first_valid_ts=50), CATALOGUE, cfg)
    assert w is not None and abs(w.sum() - 1) < 1e-9
    ids = CATALOGUE["entity_id"].to_list()
    assert w[ids.index("e1")] > w[ids.index("e2")] == w[ids.index("e3")]


def test_responses_use_each_rows_own_canvas_primary(config):
    import dataclasses

    from monorec.data.labels import responses

    # search's primary becomes "like": a search row with clicked=1 but liked=0 is not a response
    canvases = tuple(dataclasses.replace(c, primary="like") if c.name == "search" else c for c in config.canvases)
    cfg = dataclasses.replace(config, canvases=canvases)
    frame = pl.DataFrame(
        {
            "canvas": ["home", "home", "search", "search"],
            "entity_id": ["a", "b", "c", "d"],
            "clicked": [1.0, 0.0, 1.0, 1.0],
            "liked": [None, None, 0.0, 1.0],
        }
    )
    assert responses(frame, cfg)["entity_id"].to_list() == ["a", "d"]


def test_bots_are_detected_from_the_training_period_only(config, world):
    """Regression (issue 10.3): bot detection read the whole log, test period included, so what the test
    period held decided which training users were kept."""
    catalogue, logs = world
    config = dataclasses.replace(config, labels=dataclasses.replace(config.labels, max_events_per_user_per_day=50))
    human = logs.filter(pl.col("user_id") == logs["user_id"].drop_nulls()[0])
    first_ts, last_ts = int(logs["ts"].min()), int(logs["ts"].max())

    def burst(user: str, ts: int) -> pl.DataFrame:  # 60 events of one user within one day
        rows = pl.concat([human.head(1)] * 60)
        return rows.with_columns(pl.lit(user).alias("user_id"), pl.lit(ts).cast(logs["ts"].dtype).alias("ts"))

    labels = prepare_labels(
        pl.concat([logs, burst("early-burst", first_ts), burst("late-burst", last_ts)]), catalogue, config
    )
    users = set(pl.concat([f.select("user_id") for f in labels.canvases.values()])["user_id"].to_list())
    assert "early-burst" not in users  # a bot in training: dropped
    assert "late-burst" in users  # what happens in the test period does not shape the data
