"""The streaming prepare (polars' streaming engine over Parquet, tables spilled to disk) gives the same
prepared data and the same features as the in-memory prepare (issue 14, item 4)."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from monorec.artifacts import verify_manifest
from monorec.data.features import Featurizer
from monorec.data.frame_engine import FrameEngine
from monorec.data.prepared import PreparedData
from monorec.data.world import WorldSpec, write_world
from monorec.errors import DataError
from monorec.pipeline import prepare_stage

WORLD = WorldSpec(n_users=80, n_items=90, n_requests=700, impressions=8, n_bots=1, seed=5)


@pytest.fixture(scope="module")
def both(tmp_path_factory, config):
    """(in-memory prepared, streamed prepared) of one world, with popularity negatives and a sample weight
    so that every part of the plan is exercised, in buckets of 1,500 rows (4 buckets of requests, 3 of
    merged rows); the streaming side reads 1,000-row batches."""
    home = next(c for c in config.canvases if c.name == "home")
    canvases = tuple(
        dataclasses.replace(c, weights={"click": "POWER(0.5, age_days / 30)"}) if c.name == home.name else c
        for c in config.canvases
    )
    cfg = dataclasses.replace(
        config,
        canvases=canvases,
        labels=dataclasses.replace(config.labels, negative_sampling="popularity", bucket_rows=1500),
    )
    root = tmp_path_factory.mktemp("streaming")
    data = write_world(root / "world", WORLD)
    prepare_stage(cfg, data, root / "memory")
    from monorec.data.prepared import prepare_streaming
    from monorec.data.tables import log_files, read_catalogue

    prepare_streaming(cfg, read_catalogue(data, cfg), log_files(data), root / "streamed", batch_rows=1000)
    return cfg, PreparedData.load(root / "memory"), PreparedData.load(root / "streamed"), root


def test_streaming_gives_the_same_prepared_data(both):
    _, memory, streamed, root = both
    assert memory.manifest["engine"] == "memory" and streamed.manifest["engine"] == "streaming"
    assert memory.manifest["buckets"] == streamed.manifest["buckets"] > 1
    for key in ("rows", "dropped", "cutoffs", "mixture", "merged_rows", "inputs_handled"):
        assert streamed.manifest[key] == memory.manifest[key], key
    weights = memory.manifest["sample_weights"]["home"]["click"]
    assert streamed.manifest["sample_weights"]["home"]["click"] == {
        **weights,
        "train_mean": pytest.approx(weights["train_mean"], rel=1e-12),
    }
    assert memory.manifest["dropped"]["home"].get("duplicates", 0) > 0  # the world's double-logged rows
    for name, frame in memory.canvases.items():
        assert streamed.canvases[name].equals(frame), name
    assert streamed.merged_train.equals(memory.merged_train)
    assert memory.merged_train.height == memory.manifest["merged_rows"]
    assert not (root / "streamed" / "_scratch").exists()  # the spilled tables are not part of the artifact
    verify_manifest(root / "streamed")


def test_streaming_gives_the_same_features(both):
    cfg, memory, streamed, _ = both
    fitted = [Featurizer(cfg).fit(p.rows("train"), p.catalogue) for p in (memory, streamed)]
    assert fitted[0].to_dict() == fitted[1].to_dict()
    a, b = (f.transform_context(p.merged_train) for f, p in zip(fitted, (memory, streamed), strict=True))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(
        fitted[0].transform_labels(memory.merged_train), fitted[1].transform_labels(streamed.merged_train)
    )


def test_buckets_change_the_order_of_the_labels_not_the_labels(both):
    cfg, memory, _, root = both
    one = dataclasses.replace(cfg, labels=dataclasses.replace(cfg.labels, bucket_rows=1_000_000))
    prepare_stage(one, root / "world", root / "one-bucket")
    whole = PreparedData.load(root / "one-bucket")
    assert memory.manifest["rows"] == whole.manifest["rows"] and memory.manifest["dropped"] == whole.manifest["dropped"]
    for name, frame in whole.canvases.items():
        assert frame["ts"].is_sorted()  # one bucket: in time order
        key = list(frame.columns)
        assert memory.canvases[name].sort(key, nulls_last=True).equals(frame.sort(key, nulls_last=True)), name


def test_merge_keeps_a_requests_rows_together(both):
    _, memory, _, _ = both
    runs = memory.merged_train["request_id"].rle()  # runs of equal request ids
    assert runs.struct.field("value").n_unique() == runs.len()


def test_streaming_refuses_what_it_cannot_read(tmp_path, config):
    data = write_world(tmp_path / "world", WorldSpec(n_users=20, n_items=20, n_requests=60, seed=1))
    (data / "logs" / "home.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"home\.parquet"):
        prepare_stage(config, data, tmp_path / "out", streaming=True)
    assert not (tmp_path / "out").exists()  # nothing half-written looks complete
    movielens = tmp_path / "ml"
    movielens.mkdir()
    for name in ("movies.csv", "ratings.csv"):
        (movielens / name).write_text("movieId,title,genres\n")
    with pytest.raises(DataError, match="MovieLens"):
        prepare_stage(config, movielens, tmp_path / "out", streaming=True)


def test_a_streamed_partition_has_the_pieces_of_the_in_memory_one(tmp_path):
    """Streaming, a frame is cut into pieces in one pass (each batch's rows appended to their piece's file):
    every piece holds the rows the in-memory filter gives, in the same order, across several batches, and
    a piece no row falls into is empty with the frame's columns."""
    frame = pl.LazyFrame({"k": [3, 0, 3, 1, 0, 3, 1], "v": list("abcdefg")})
    in_memory = FrameEngine().partition(frame, pl.col("k"), 5, "cut", batch_rows=2)
    streamed = FrameEngine(tmp_path).partition(frame, pl.col("k"), 5, "cut", batch_rows=2)
    for expected, got in zip(in_memory, streamed, strict=True):
        assert_frame_equal(got.collect(), expected.collect())
    assert streamed[3].collect()["v"].to_list() == ["a", "c", "f"]  # three batches, one file
    assert streamed[2].collect().columns == ["k", "v"] and streamed[2].collect().height == 0
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["00000.parquet", "00001.parquet", "00003.parquet"]
