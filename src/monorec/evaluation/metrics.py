"""Ranking and classification metrics (fast, vectorized; the tests hold slow reference versions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["auc", "log_loss", "ndcg_at_k", "recall_at_k", "rmse"]


def _hits(topk: np.ndarray, relevant: Sequence[np.ndarray]) -> np.ndarray:
    """(R, K) recommended ids, R relevant-id arrays -> (R, K) 0/1 hit matrix."""
    hits = np.zeros(topk.shape, dtype=np.float64)
    for r, rel in enumerate(relevant):
        hits[r] = np.isin(topk[r], rel)
    return hits


def recall_at_k(topk: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Per request: |top-k ∩ relevant| / |relevant|. Returns (R,)."""
    hits = _hits(topk[:, :k], relevant)
    sizes = np.array([max(len(r), 1) for r in relevant], dtype=np.float64)
    return hits.sum(axis=1) / sizes


def ndcg_at_k(topk: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Per request: binary-relevance NDCG@k. Returns (R,)."""
    hits = _hits(topk[:, :k], relevant)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discounts[: hits.shape[1]]).sum(axis=1)
    ideal = np.array([discounts[: min(len(r), k)].sum() for r in relevant])
    return np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC via the rank-sum (Mann-Whitney) statistic with average ranks for ties; NaN if one class."""
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average rank within runs of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1 - eps])."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def rmse(targets: np.ndarray, predictions: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(targets) - np.asarray(predictions)) ** 2)))
