"""Per-sample loss weights: declared per canvas and objective, computed while preparing, applied in the
losses (monorec.data.weights, monorec.models.losses, monorec.train_step)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import polars as pl
import pytest
import torch

from monorec.config import ProjectConfig, parse_config
from monorec.data.prepared import prepare
from monorec.data.weights import weight_column
from monorec.errors import ConfigError, DataError
from monorec.models.losses import masked_objective_losses, sampled_softmax_loss
from monorec.pipeline import default_config

RECENCY = "POWER(0.5, age_days / 30)"
WATCHED = "1 + LN(1 + watch_seconds)"


def _with_weights(config: ProjectConfig, canvas: str, weights: dict[str, str]) -> ProjectConfig:
    canvases = tuple(dataclasses.replace(c, weights=weights) if c.name == canvas else c for c in config.canvases)
    return dataclasses.replace(config, canvases=canvases)


def test_weighted_objective_losses_match_a_reference():
    torch.manual_seed(0)
    logits = torch.randn(6, 2)
    labels = torch.tensor([[1.0, 0.3], [0.0, float("nan")], [1.0, -1.2], [float("nan"), 2.0], [0.0, 0.1], [1.0, 0.0]])
    weights = torch.tensor([[0.5, 2.0], [1.0, 1.0], [0.0, 3.0], [4.0, 0.25], [2.0, 1.0], [1.5, 0.0]])
    losses, counts = masked_objective_losses(logits, labels, [True, False], weights)
    expected = []
    for o, binary in enumerate([True, False]):
        num = den = 0.0
        for i in range(6):
            y = float(labels[i, o])
            if math.isnan(y):
                continue
            x, w = float(logits[i, o]), float(weights[i, o])
            loss = (max(x, 0) - x * y + math.log1p(math.exp(-abs(x)))) if binary else (x - y) ** 2
            num, den = num + w * loss, den + w
        expected.append(num / den)
    torch.testing.assert_close(losses, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert counts.tolist() == [5, 5]  # observed rows, whatever their weights
    # weights of 1 are the unweighted losses
    plain, _ = masked_objective_losses(logits, labels, [True, False])
    torch.testing.assert_close(masked_objective_losses(logits, labels, [True, False], torch.ones(6, 2))[0], plain)


def test_weighted_sampled_softmax_matches_a_reference():
    torch.manual_seed(1)
    q, p, n = torch.randn(4, 5), torch.randn(4, 5), torch.randn(3, 5)
    pid, nid, logq = torch.tensor([0, 1, 2, 3]), torch.tensor([7, 8, 9]), torch.zeros(4)
    w = torch.tensor([1.0, 0.0, 3.0, 0.5])
    got = sampled_softmax_loss(q, p, pid, logq, n, nid, 0.0, temperature=0.5, weights=w)
    rows = []
    for i in range(4):
        logits = torch.cat([q[i] @ p.T / 0.5, q[i] @ n.T / 0.5])
        rows.append(torch.logsumexp(logits, 0) - logits[i])
    torch.testing.assert_close(got, (torch.stack(rows) * w).sum() / w.sum())


def test_the_config_names_a_bad_weight(config):
    from monorec._typed_tables import read_toml

    raw = read_toml(default_config("synthetic"))
    raw["canvases"]["home"]["weights"] = {"click": "LN(", "nope": "1", "retrieval": RECENCY}
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    problems = "\n".join(err.value.problems)
    assert "canvases.home.weights.click" in problems and "SQL" in problems
    assert "canvases.home.weights.nope" in problems and "objectives" in problems
    assert "weights.retrieval" not in problems


def test_prepare_computes_the_declared_weights(config, world):
    catalogue, logs = world
    cfg = _with_weights(config, "home", {"click": RECENCY, "retrieval": WATCHED})
    data = prepare(cfg, catalogue, logs)
    first_valid = data.manifest["cutoffs"]["first_valid_ts"]
    home = data.canvases["home"].filter(pl.col("split") == "train")
    age = (first_valid - home["ts"].to_numpy()) / 86400
    np.testing.assert_allclose(home[weight_column("click")].to_numpy(), 0.5 ** (age / 30), rtol=1e-12)
    # a row without a watch time (not clicked) weighs 1, and is counted
    watch = home["watch_seconds"].to_numpy()
    expected = np.where(np.isnan(watch.astype(float)), 1.0, 1 + np.log1p(np.nan_to_num(watch.astype(float))))
    np.testing.assert_allclose(home[weight_column("retrieval")].to_numpy(), expected, rtol=1e-12)
    record = data.manifest["sample_weights"]["home"]
    assert record["click"]["expression"] == RECENCY
    assert record["retrieval"]["nulls_weighed_1"] == int(data.canvases["home"]["watch_seconds"].is_null().sum()) > 0
    # other canvases weigh 1 (every canvas has the columns, so the merge stacks them)
    assert data.canvases["search"][weight_column("click")].unique().to_list() == [1.0]
    assert set(data.merged_train.columns) >= {weight_column("click"), weight_column("retrieval")}


@pytest.mark.parametrize(
    ("expression", "reason"),
    [("watch_seconds - 1000", "negative or non-finite"), ("no_such_column * 2", "which the logs do not have")],
)
def test_a_bad_weight_is_a_data_error_that_names_it(config, world, expression, reason):
    catalogue, logs = world
    with pytest.raises(DataError, match=reason) as err:
        prepare(_with_weights(config, "home", {"watch": expression}), catalogue, logs)
    assert err.value.file == "canvases.home.weights" and err.value.column == "watch"


def test_a_zero_weight_row_does_not_train(config, world):
    """The weighted losses of a batch whose rows S weigh 0 equal the unweighted losses of the batch
    without S, for every task (objectives, retrieval, every-prefix): a reference from the model itself."""
    from monorec.data.features import Featurizer
    from monorec.models.model import build_model, model_kwargs
    from monorec.train_step import TrainStep
    from monorec.training_data import TrainingData

    catalogue, logs = world
    some = "CASE WHEN ts % 3 = 0 THEN 0 ELSE 1 END"
    cfg = _with_weights(config, "home", {"click": some, "retrieval": some})
    cfg = _with_weights(cfg, "related", {"retrieval": some})
    # every prefix of the related rows' histories (home has none in this config)
    train_spec = dataclasses.replace(cfg.train, sequence_prefixes=0, sequence_canvases=("related",))
    cfg = dataclasses.replace(cfg, train=train_spec)
    data = prepare(cfg, catalogue, logs)
    rows = data.merged(cfg.canvas_names).head(600)
    fz = Featurizer(cfg).fit(data.rows("train"), data.catalogue)
    torch.manual_seed(0)
    model = build_model(model_kwargs(cfg, fz))
    train = TrainingData.build(cfg, fz, rows, data.catalogue, torch.device("cpu"))
    step = TrainStep(model, cfg, train, torch.Generator().manual_seed(0))
    model.eval()  # no dropout: each row's loss is its own
    assert train.weights is not None
    zero = (train.weights == 0).any(dim=1)
    assert 0 < int(zero.sum()) < len(train)
    everything = torch.arange(len(train))
    weighted, present = step.losses(train, everything, torch.Generator().manual_seed(1))
    # the reference: the same rows with weight 0 in a task dropped from that task (losses computed on the
    # unweighted data restricted per task)
    unweighted = train.without_weights()
    names = step.task_names
    for task, column in (("click", names.index("click")), ("retrieval", -1), ("next_entity", -1)):
        keep = everything[train.weights[:, column] > 0]
        reference, _ = step.losses(unweighted, keep, torch.Generator().manual_seed(1))
        assert bool(present[names.index(task)])
        torch.testing.assert_close(weighted[names.index(task)], reference[names.index(task)], rtol=1e-5, atol=1e-6)


def test_training_records_its_weights(config, world):
    from monorec.train import train

    catalogue, logs = world
    cfg = _with_weights(config, "home", {"click": RECENCY})
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1))
    bundle = train(cfg, prepare(cfg, catalogue, logs), progress=False)
    assert bundle.meta["sample_weights"]["home"]["click"]["expression"] == RECENCY
    assert bundle.meta["sample_weights"]["search"] == {}
    assert bundle.meta["history"][0]["val_losses"]  # learning curves whatever the selection
