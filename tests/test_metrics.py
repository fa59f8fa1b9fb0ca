"""Fast metrics against slow reference implementations written here."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monorec.evaluation.metrics import auc, log_loss, ndcg_at_k, recall_at_k


def ref_recall(ranked, relevant, k):
    return len(set(ranked[:k]) & set(relevant)) / max(len(relevant), 1)


def ref_ndcg(ranked, relevant, k):
    dcg = sum(1.0 / math.log2(i + 2) for i, x in enumerate(ranked[:k]) if x in relevant)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / idcg if idcg else 0.0


def ref_auc(labels, scores):
    pos = [s for y, s in zip(labels, scores, strict=True) if y]
    neg = [s for y, s in zip(labels, scores, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_ranking_metrics_match_reference(data):
    n_items, k = 30, data.draw(st.integers(1, 12))
    rows = data.draw(st.integers(1, 8))
    ranked = [data.draw(st.permutations(range(n_items)))[:12] for _ in range(rows)]
    relevant = [
        data.draw(st.lists(st.integers(0, n_items - 1), min_size=1, max_size=6, unique=True)) for _ in range(rows)
    ]
    topk = np.array(ranked)
    rel = [np.array(r) for r in relevant]
    np.testing.assert_allclose(
        recall_at_k(topk, rel, k), [ref_recall(a, b, k) for a, b in zip(ranked, relevant, strict=True)]
    )
    np.testing.assert_allclose(
        ndcg_at_k(topk, rel, k), [ref_ndcg(a, b, k) for a, b in zip(ranked, relevant, strict=True)]
    )


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(-5, 5)), min_size=2, max_size=60))
def test_auc_matches_pairwise_reference_with_ties(pairs):
    labels = np.array([p[0] for p in pairs])
    scores = np.array([float(p[1]) for p in pairs])
    if labels.all() or not labels.any():
        assert math.isnan(auc(labels, scores))
    else:
        assert auc(labels, scores) == pytest_approx(ref_auc(labels, scores))


def pytest_approx(x):
    import pytest

    return pytest.approx(x, abs=1e-12)


def test_log_loss_reference():
    y, p = np.array([1, 0, 1]), np.array([0.9, 0.2, 0.5])
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.5)) / 3
    assert log_loss(y, p) == pytest_approx(expected)
    assert math.isfinite(log_loss(np.array([1]), np.array([0.0])))  # clipped, not inf


def test_perfect_and_worst_rankings():
    topk = np.array([[1, 2, 3], [7, 8, 9]])
    rel = [np.array([1]), np.array([1])]
    assert recall_at_k(topk, rel, 3).tolist() == [1.0, 0.0]
    assert ndcg_at_k(topk, rel, 3).tolist() == [1.0, 0.0]
