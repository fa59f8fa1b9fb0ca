import dataclasses

import numpy as np
import polars as pl
import pytest
import torch

from monorec.errors import ConfigError
from monorec.evaluation.evaluate import evaluate_bundle
from monorec.train import train


def _weights(bundle):
    return {k: v.clone() for k, v in bundle.model.state_dict().items()}


def test_training_is_seeded_and_reproducible(config, prepared):
    cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1))
    a, b = _weights(train(cfg, prepared, progress=False)), _weights(train(cfg, prepared, progress=False))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_training_does_not_depend_on_the_ambient_thread_count(config, prepared, monkeypatch):
    # the serving side sizes torch's threads by the machine's load; training must not inherit that count
    monkeypatch.delenv("MONOREC_TORCH_THREADS", raising=False)
    cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1, threads=2))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = train(cfg, prepared, progress=False)
        assert torch.get_num_threads() == 1  # restored after training
        torch.set_num_threads(2)
        b = train(cfg, prepared, progress=False)
    finally:
        torch.set_num_threads(before)
    assert a.meta["threads"] == b.meta["threads"] == 2
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_training_learns_and_records_history(trained, prepared, config):
    history = trained.meta["history"]
    assert len(history) >= 1 and history[-1]["loss"] < history[0]["loss"] * 1.5
    assert trained.meta["best_epoch"] in range(config.train.epochs)
    assert set(trained.meta["mixture"]) == set(config.canvas_names)
    report = evaluate_bundle(trained, prepared, "test")
    for canvas in config.canvas_names:
        m = report["canvases"][canvas]
        assert 0.0 <= m["ndcg@10"] <= 1.0 and m["requests"] > 0
        assert "click" in m["objectives"] and 0.0 <= m["objectives"]["click"]["auc"] <= 1.0


def test_embedding_tables_get_row_wise_sparse_updates(config, prepared):
    """Only rows used by a batch move: a dense optimizer would drift every row (Adam moments, decay)."""
    from monorec.data.features import Featurizer
    from monorec.models.model import build_model, model_kwargs
    from monorec.train_step import TrainStep
    from monorec.training_data import TrainingData

    fz = Featurizer(config).fit(prepared.rows("train"), prepared.catalogue)
    model = build_model(model_kwargs(config, fz))
    data = TrainingData.build(config, fz, prepared.merged(config.canvas_names), prepared.catalogue, torch.device("cpu"))
    step = TrainStep(model, config, data, torch.Generator().manual_seed(0))
    kinds = []
    model.tables.text.weight.register_hook(lambda g: kinds.append(g.is_sparse))
    model.tables.tables["entity"].weight.register_hook(lambda g: kinds.append(g.is_sparse))
    before = model.tables.text.weight.detach().clone()
    step.step(torch.arange(8))
    assert kinds and all(kinds)  # gradients of the tables are sparse (row-wise)
    changed = (model.tables.text.weight.detach() != before).any(dim=1)
    anywhere = set(data.ctx["query"].flatten().tolist()) | set(data.items["title"].flatten().tolist())
    assert int(changed.sum()) > 0
    assert set(changed.nonzero().flatten().tolist()) <= anywhere - {0}  # unused buckets never move


def test_checkpoint_resume_continues_where_it_stopped(tmp_path, config, prepared):
    one = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1, patience=5))
    two = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=2, patience=5))
    train(one, prepared, checkpoint_dir=tmp_path, progress=False)
    resumed = train(two, prepared, checkpoint_dir=tmp_path, progress=False)
    straight = train(two, prepared, checkpoint_dir=tmp_path / "fresh", progress=False)
    assert [h["epoch"] for h in resumed.meta["history"]] == [0, 1]
    for k, v in _weights(straight).items():
        torch.testing.assert_close(_weights(resumed)[k], v)


def test_baseline_mode_trains_one_canvas(config, prepared):
    bundle = train(config, prepared, canvases=("search",), progress=False)
    assert bundle.config.canvas_names == ("search",)
    assert bundle.model.n_tasks == 1
    assert bundle.meta["train_rows"] == prepared.merged(("search",)).height


def test_selection_by_validation_loss(config, prepared):
    cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=2, selection="loss"))
    bundle = train(cfg, prepared, progress=False)
    scores = [h["val_score"] for h in bundle.meta["history"]]
    assert all(s < 0 for s in scores)  # minus a loss
    assert bundle.meta["best_val_score"] == max(scores)
    assert bundle.meta["best_epoch"] == scores.index(max(scores))


def test_id_dropout_trains_the_unknown_sentinel(config, prepared):
    """Without id dropout no training row carries an unknown user, so that embedding never moves."""
    from monorec.data.features import UNKNOWN_INDEX

    def unknown_row_moves(p: float) -> bool:
        cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1, id_dropout=p))
        from monorec.data.features import Featurizer
        from monorec.models.model import build_model, model_kwargs
        from monorec.train_step import TrainStep
        from monorec.training_data import TrainingData

        fz = Featurizer(cfg).fit(prepared.rows("train"), prepared.catalogue)
        model = build_model(model_kwargs(cfg, fz))
        data = TrainingData.build(cfg, fz, prepared.merged(cfg.canvas_names), prepared.catalogue, torch.device("cpu"))
        step = TrainStep(model, cfg, data, torch.Generator().manual_seed(0))
        table = model.tables.tables["field__user_id"].weight
        before = table[UNKNOWN_INDEX].detach().clone()
        known = data.ctx["user_id"] >= 2
        for idx in torch.nonzero(known).flatten()[:512].split(128):  # rows whose user is known
            step.step(idx)
        return not torch.equal(before, table[UNKNOWN_INDEX].detach())

    assert not unknown_row_moves(0.0)
    assert unknown_row_moves(0.5)


@pytest.mark.slow
def test_a_canvas_without_rows_is_reported_empty_and_skipped(config, world):
    """Regression (issue 10.5): a dataset without a canvas's rows (MovieLens without tags: no search)
    crashed while training the dedicated model of that canvas."""
    from monorec.data.prepared import prepare
    from monorec.errors import DataError
    from monorec.pipeline import compare_models
    from monorec.train import train

    catalogue, logs = world
    prepared = prepare(config, catalogue, logs.filter(pl.col("canvas") != "search"))
    assert prepared.manifest["empty_canvases"] == ["search"]
    with pytest.raises(DataError, match="search"):
        train(config, prepared, canvases=("search",), progress=False)
    _, results = compare_models(config, prepared, progress=False, baselines=False)
    empty = results["separate"]["canvases"]["search"]
    assert empty["empty"] is True and empty["requests"] == 0
    assert results["consolidated"]["canvases"]["search"]["requests"] == 0
    assert results["consolidated"]["canvases"]["home"]["requests"] > 0
    # the epoch early stopping kept, per model: within each model's budget
    assert 1 <= results["consolidated"]["kept_epoch"] <= config.train.epochs
    home = results["separate"]["canvases"]["home"]
    assert 1 <= home["kept_epoch"] <= home["epochs"] and home["epochs"] >= config.train.epochs


def test_a_dedicated_model_gets_the_consolidated_budget_in_steps(config, prepared):
    """Regression (issue 10.3): every dedicated model had the consolidated model's epochs over far fewer
    rows (the search model ~30x fewer gradient steps)."""
    from monorec.pipeline import MAX_DEDICATED_EPOCHS, dedicated_config

    mixture = prepared.manifest["mixture"]
    total = sum(m["rows"] for m in mixture.values())
    for canvas, m in mixture.items():
        epochs = dedicated_config(config, prepared, canvas).train.epochs
        steps_ratio = epochs * m["rows"] / (config.train.epochs * total)
        assert epochs == MAX_DEDICATED_EPOCHS or 1.0 <= steps_ratio < 1.0 + m["rows"] / total + 1e-9, canvas
        assert epochs >= config.train.epochs


def test_selection_reads_the_declared_canvases_only():
    from monorec.train import validation_score

    val = {
        "home": {"ndcg@10": 0.02, "requests": 100},
        "search": {"ndcg@10": 0.50, "requests": 10},
        "browse": {"ndcg@10": 0.04, "requests": 300},
    }
    assert validation_score(val, 10) == pytest.approx((2 + 5 + 12) / 410)
    assert validation_score(val, 10, ("home", "browse")) == pytest.approx((2 + 12) / 400)


def test_selection_canvases_must_be_declared_and_follow_a_dedicated_model(config):
    from monorec.config import parse_config

    raw = config.to_dict()
    raw["train"]["selection_canvases"] = ["home", "nope"]
    with pytest.raises(ConfigError, match=r"train\.selection_canvases"):
        parse_config(raw)
    cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, selection_canvases=("home", "browse")))
    assert cfg.only_canvases(["search"]).train.selection_canvases == ()  # its own canvas selects
    assert cfg.only_canvases(["browse", "search"]).train.selection_canvases == ("browse",)


def test_hard_negatives_are_the_towers_top_pool_entities_and_train(config, prepared):
    """Above ``full_softmax_max`` (forced tiny here) each query's hard negatives are the entities its
    current towers score highest in a uniform pool, never its target; training with them runs."""
    from monorec.data.features import Featurizer
    from monorec.models.model import build_model, model_kwargs
    from monorec.train_step import TrainStep
    from monorec.training_data import TrainingData

    t = dataclasses.replace(config.train, full_softmax_max=10, hard_negatives=3, hard_negative_pool=40, epochs=1)
    cfg = dataclasses.replace(config, train=t)
    fz = Featurizer(cfg).fit(prepared.rows("train"), prepared.catalogue)
    model = build_model(model_kwargs(cfg, fz))
    data = TrainingData.build(cfg, fz, prepared.merged(cfg.canvas_names), prepared.catalogue, torch.device("cpu"))
    step = TrainStep(model, cfg, data, torch.Generator().manual_seed(0))
    model.eval()
    ctx = {k: v[:8] for k, v in data.ctx.items()}
    _, query = model.encode_context(ctx)
    target = data.entity[:8]
    emb, ids = step._hard_negatives(query, target, torch.Generator().manual_seed(5))
    assert emb.shape == (8, 3, query.shape[1]) and ids.shape == (8, 3)
    pool = torch.randint(0, step.n_items, (40,), generator=torch.Generator().manual_seed(5))  # the same draw
    with torch.no_grad():
        _, all_items = model.encode_items(data.items)
    scores = query.detach() @ all_items.T  # (8, N)
    for i in range(8):
        assert target[i] not in ids[i]
        others = [int(e) for e in pool if int(e) not in ids[i].tolist() and int(e) != int(target[i])]
        assert scores[i, ids[i]].min() >= max(scores[i, others]) - 1e-5
        torch.testing.assert_close(emb[i], all_items[ids[i]], rtol=1e-5, atol=1e-5)
    bundle = train(cfg, prepared, progress=False)
    assert np.isfinite(bundle.meta["history"][0]["loss"])
