"""Training reads its rows in shards from an opened prepared folder, without holding the tables (issue 14,
item 4): the same model as from memory with one shard, and a model the gate accepts with many."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest
import torch

from monorec.data.prepared import PreparedData
from monorec.errors import ConfigError
from monorec.evaluation.evaluate import evaluate_bundle
from monorec.evaluation.gate import compare_reports
from monorec.train import train
from monorec.training_data import TrainingShards


@pytest.fixture(scope="module")
def folder(tmp_path_factory, prepared):
    return prepared.save(tmp_path_factory.mktemp("prepared") / "prepared")


def _same_weights(a, b) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_an_opened_folder_trains_the_same_model_as_memory(config, prepared, trained, folder):
    opened = PreparedData.open(folder)
    bundle = train(config, opened, progress=False)
    assert _same_weights(bundle, trained)
    assert bundle.meta["train_rows"] == trained.meta["train_rows"] and bundle.meta["train_shards"] == 1


def test_shards_train_a_model_the_gate_accepts_without_loading_the_tables(config, prepared, trained, folder):
    rows = prepared.merged_train.height
    cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, shard_rows=rows // 5 + 1))
    opened = PreparedData.open(folder)
    bundle = train(cfg, opened, progress=False)
    assert opened.held_in_memory == []  # every table was read lazily: a shard, a split, an aggregate
    assert bundle.meta["train_shards"] == 5 and bundle.meta["train_rows"] == rows
    assert not _same_weights(bundle, trained)  # other batches: another model...
    sharded, whole = evaluate_bundle(bundle, prepared, "test"), evaluate_bundle(trained, prepared, "test")
    gate = compare_reports(sharded, whole, tolerance=config.evaluate.gate_tolerance)
    assert gate.passed, gate.regressions  # ...as good


def test_shards_cover_every_row_once_per_epoch_in_a_fresh_order(prepared):
    shards = TrainingShards(prepared.merged_train.lazy(), shard_rows=700)
    assert shards.count == -(-prepared.merged_train.height // 700)
    orders = [shards.order(epoch, seed=0) for epoch in range(3)]
    assert all(sorted(o) == list(range(shards.count)) for o in orders) and orders[0] != orders[1]
    assert shards.order(1, seed=0) == orders[1]  # a resumed run visits the same order
    read = [shards.read(i) for i in orders[0]]
    assert sum(f.height for f in read) == prepared.merged_train.height
    capped = TrainingShards(prepared.merged_train.lazy(), shard_rows=700, max_rows=1000)
    assert len(capped) == 1000 and capped.count == 2 and capped.read(1).height == 300


def test_negative_shard_rows_are_refused(config):
    from monorec.config import parse_config

    raw = config.to_dict()
    raw["train"]["shard_rows"] = -1
    with pytest.raises(ConfigError, match="shard_rows"):
        parse_config(raw, "test")


def test_a_large_validation_split_is_sampled_by_whole_requests(prepared):
    from monorec.train import validation_rows

    valid = prepared.rows("valid")
    assert validation_rows(prepared.scan("valid"), 0).equals(valid)
    assert validation_rows(prepared.scan("valid"), valid.height).equals(valid)
    cap = valid.height // 4
    sample = validation_rows(prepared.scan("valid"), cap)
    assert 0.6 * cap < sample.height < 1.4 * cap
    assert sample.equals(validation_rows(prepared.scan("valid"), cap))  # seeded
    kept = valid.filter(pl.col("request_id").is_in(sample["request_id"].unique().implode()))
    assert kept.height == sample.height  # every row of a kept request, none of the others
