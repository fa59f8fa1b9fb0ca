"""The model is worth serving: on a small seeded synthetic world, the trained model beats popularity by a
margin (the lower end of the paired 95% interval of the difference above zero) on search and browse,
and is above it on average on home and related.

A random or collapsed model fails this test: popularity is what a model that learned nothing from the
context degenerates to. Home and related are held to the weaker bar for now: on this world the model's
lead there (about +0.004 and +0.012 NDCG@10, on 154 and 133 requests) is not significant yet (issue 10 is
open on it).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from monorec.config import load_config
from monorec.data.prepared import prepare
from monorec.data.world import WorldSpec, generate_world
from monorec.evaluation.compare import paired_bootstrap
from monorec.evaluation.evaluate import evaluate_recommender, request_sets
from monorec.evaluation.recommenders import ModelRecommender, PopularityRecommender
from monorec.pipeline import default_config
from monorec.train import train

WORLD = WorldSpec(n_users=400, n_items=300, n_requests=5000, n_bots=1, seed=7)


@pytest.fixture(scope="module")
def outcome():
    config = load_config(default_config("synthetic"))
    config = dataclasses.replace(
        config,
        train=dataclasses.replace(config.train, epochs=5, val_requests=200),
        evaluate=dataclasses.replace(config.evaluate, max_requests=400),
    )
    catalogue, logs = generate_world(WORLD)
    prepared = prepare(config, catalogue, logs)
    bundle = train(config, prepared, progress=False)
    requests = request_sets(config, prepared, "test")
    model = evaluate_recommender(ModelRecommender(bundle, prepared.catalogue), requests, 10)
    popular = PopularityRecommender(prepared.responses("train"), prepared.catalogue)
    baseline = evaluate_recommender(popular, requests, 10)
    return config, model, baseline


def _difference(outcome, canvas):
    _, model, baseline = outcome
    ours = np.asarray(model[canvas]["per_request"]["ndcg@10"])
    theirs = np.asarray(baseline[canvas]["per_request"]["ndcg@10"])
    said = f"{canvas}: model {ours.mean():.4f} vs popularity {theirs.mean():.4f}"
    return paired_bootstrap(ours, theirs, seed=0), said


@pytest.mark.parametrize("canvas", ["search", "browse"])
def test_model_beats_popularity(outcome, canvas):
    diff, said = _difference(outcome, canvas)
    assert diff.low > 0, f"{said}, {diff.to_dict()}"


@pytest.mark.parametrize("canvas", ["home", "related"])
def test_model_is_above_popularity_on_average(outcome, canvas):
    diff, said = _difference(outcome, canvas)
    assert diff.mean > 0 and diff.high > 0, f"{said}, {diff.to_dict()}"
