"""Sequence encoders of entity histories: causal, and one pass gives every prefix exactly."""

import numpy as np
import polars as pl
import pytest
import torch

from monorec.bundle import context_tensors
from monorec.config import load_config, parse_config
from monorec.data.features import Featurizer
from monorec.errors import ConfigError
from monorec.models.model import build_model, model_kwargs
from monorec.models.sequence import SEQUENCE_ENCODERS, SequenceEncoder
from monorec.pipeline import default_config


def _history(batch: int, length: int, lengths: list[int], vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (batch, length), generator=g)
    for b, n in enumerate(lengths):
        ids[b, n:] = 0
    return ids


@pytest.mark.parametrize("kind", SEQUENCE_ENCODERS)
def test_outputs_are_causal(kind):
    """Changing what comes after position t never changes the output at t."""
    torch.manual_seed(0)
    enc = SequenceEncoder(kind, 8, 12, layers=2, heads=2, dropout=0.0).eval()
    emb = torch.randn(3, 10, 8)
    valid = torch.ones(3, 10, dtype=torch.bool)
    later = emb.clone()
    later[:, 6:] = torch.randn(3, 4, 8)
    torch.testing.assert_close(enc(emb, valid)[:, :6], enc(later, valid)[:, :6])
    assert not torch.allclose(enc(emb, valid)[:, 6:], enc(later, valid)[:, 6:])


@pytest.mark.parametrize("kind", SEQUENCE_ENCODERS)
def test_last_is_the_prefix_output_and_padding_is_ignored(kind):
    torch.manual_seed(0)
    enc = SequenceEncoder(kind, 8, 12, dropout=0.0).eval()
    emb = torch.randn(4, 9, 8)
    valid = torch.arange(9)[None, :] < torch.tensor([9, 4, 1, 0])[:, None]
    last = enc.last(emb, valid)
    for b, n in enumerate([9, 4, 1]):
        alone = enc.last(emb[b : b + 1, :n], valid[b : b + 1, :n])  # the same history without padding
        torch.testing.assert_close(last[b], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last[3], enc.empty)  # no history at all: the learned "empty" vector
    noisy = emb.clone()
    noisy[1, 4:] = 100.0  # garbage past the end of row 1's history
    torch.testing.assert_close(enc.last(noisy, valid)[1], last[1], atol=1e-5, rtol=1e-5)


def test_order_matters_except_for_the_mean():
    torch.manual_seed(0)
    emb = torch.randn(1, 5, 8)
    valid = torch.ones(1, 5, dtype=torch.bool)
    reverse = emb.flip(1)
    for kind in SEQUENCE_ENCODERS:
        enc = SequenceEncoder(kind, 8, 8, dropout=0.0).eval()
        same = torch.allclose(enc.last(emb, valid), enc.last(reverse, valid), atol=1e-5)
        assert same == (kind == "mean"), kind


def test_transformer_refuses_a_history_longer_than_its_positions():
    enc = SequenceEncoder("transformer", 8, 4)
    with pytest.raises(ValueError, match="longer than"):
        enc(torch.randn(1, 5, 8), torch.ones(1, 5, dtype=torch.bool))


def test_config_rejects_bad_sequence_settings(movielens_config_dict):
    raw = dict(movielens_config_dict)
    raw["model"] = {**raw.get("model", {}), "sequence_encoder": "lstm"}
    raw["train"] = {**raw.get("train", {}), "sequence_canvases": ["nowhere"]}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "test")
    assert "model.sequence_encoder" in str(err.value) and "train.sequence_canvases" in str(err.value)
    raw["model"] = {**raw.get("model", {}), "sequence_encoder": "transformer", "sequence_heads": 5}
    raw["train"] = movielens_config_dict["train"]
    with pytest.raises(ConfigError, match=r"model.sequence_heads: must divide model.embedding_dim \(32\)"):
        parse_config(raw, "test")


@pytest.mark.parametrize("kind", SEQUENCE_ENCODERS)
def test_every_prefix_equals_encoding_each_prefix_as_a_request(kind, movielens_config_dict):
    """The training path (one causal pass, every prefix) and the serving path (one request per prefix,
    its history truncated) give the same context embeddings."""
    raw = dict(movielens_config_dict)
    raw["model"] = {**raw.get("model", {}), "sequence_encoder": kind}
    config = parse_config(raw, "test")
    catalogue = pl.DataFrame(
        {
            "entity_id": [f"m{i}" for i in range(30)],
            "entity_type": ["movie"] * 30,
            "title": [f"title {i}" for i in range(30)],
            "categories": ["Drama"] * 30,
        }
    )
    train = pl.DataFrame(
        {
            "canvas": ["home"] * 30,
            "user_id": ["u1"] * 30,
            "entity_id": [f"m{i}" for i in range(30)],
            "watched": [1.0] * 30,
        }
    )
    featurizer = Featurizer(config).fit(train, catalogue)
    torch.manual_seed(0)
    model = build_model(model_kwargs(config, featurizer)).eval()
    history = "|".join(f"m{i}" for i in (3, 7, 1, 20, 11, 5))
    rows = pl.DataFrame({"task_type": ["home"], "user_id": ["u1"], "history": [history]})
    ctx = context_tensors(featurizer.transform_context(rows))
    with torch.no_grad():
        every = model.context_encoder.every_prefix(ctx, "history")[0]  # (L, D)
        for t in range(6):
            prefix = "|".join(history.split("|")[: t + 1])
            one = context_tensors(featurizer.transform_context(rows.with_columns(pl.lit(prefix).alias("history"))))
            _, emb = model.encode_context(one)
            torch.testing.assert_close(every[t], emb[0], atol=1e-5, rtol=1e-5)
    assert np.isfinite(every.numpy()).all()


@pytest.fixture
def movielens_config_dict():
    return load_config(default_config("movielens")).to_dict()


def test_bad_histories_and_untitled_items_are_handled_and_counted(config, world):
    """Empty histories, unknown ids, histories longer than kept, entities without a title: a sentinel or a
    truncation each, counted in the prepare manifest; training and serving go through."""
    from monorec.data.prepared import prepare
    from monorec.evaluation.recommenders import ModelRecommender
    from monorec.evaluation.requests import RequestSet
    from monorec.train import train

    catalogue, logs = world
    ids = catalogue["entity_id"].to_list()
    long = "|".join(ids[:45])  # longer than the field's 20
    n = logs.height
    history = (
        pl.when(pl.int_range(n) % 7 == 0)
        .then(pl.lit("ghost-1|ghost-2"))
        .when(pl.int_range(n) % 7 == 1)
        .then(pl.lit(long))
        .when(pl.int_range(n) % 7 == 2)
        .then(pl.lit(None, dtype=pl.String))
        .otherwise(pl.col("history"))
    )
    logs = logs.with_columns(history.alias("history"))
    catalogue = catalogue.with_columns(
        pl.when(pl.int_range(catalogue.height) < 5).then(pl.lit("")).otherwise(pl.col("title")).alias("title")
    )
    prepared = prepare(config, catalogue, logs)
    handled = prepared.manifest["inputs_handled"]
    assert handled["entities_without_title"] == 5
    browse = handled["browse.history"]
    assert browse["with_unknown_ids"] > 0 and browse["truncated"] > 0 and browse["empty"] > 0
    bundle = train(config, prepared, progress=False)
    contexts = pl.DataFrame(
        {
            "task_type": ["browse"] * 3,
            "user_id": ["nobody", "nobody", "nobody"],
            "category": ["drama"] * 3,
            "history": [None, "ghost-1|ghost-2", long],
        }
    )
    requests = RequestSet("browse", contexts, [np.array([0])] * 3, [np.zeros(0, dtype=np.int64)] * 3, np.ones(3, bool))
    top = ModelRecommender(bundle, prepared.catalogue, depth=20).recommend(requests, 10)
    assert top.shape == (3, 10) and (top >= 0).all()
