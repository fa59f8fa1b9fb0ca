"""Losses: sampled softmax with popularity (logQ) correction, masked per-objective losses, and loss
weighting (fixed or learned uncertainty weights, Kendall et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FixedWeighting",
    "UncertaintyWeighting",
    "masked_objective_losses",
    "sampled_softmax_loss",
    "weighted_mean",
]


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``sum(w * v) / sum(w)`` of (B,) per-row losses (the plain mean without weights; 0 when every
    weight is 0): per-sample weights move the emphasis between rows, not the loss's scale."""
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum().clamp(min=1e-12)


def sampled_softmax_loss(
    query: torch.Tensor,
    positives: torch.Tensor,
    positive_ids: torch.Tensor,
    positive_logq: torch.Tensor,
    negatives: torch.Tensor,
    negative_ids: torch.Tensor,
    negative_logq: float,
    temperature: float,
    weights: torch.Tensor | None = None,
    hard: torch.Tensor | None = None,
    hard_ids: torch.Tensor | None = None,
    hard_logq: float = 0.0,
) -> torch.Tensor:
    """In-batch plus uniformly sampled negatives softmax, with logQ correction (Yi et al. 2019), plus each
    row's own hard negatives when given (mixed negative sampling).

    Args:
        query: (B, D) context embeddings of positive rows.
        positives: (B, D) their positive entities' embeddings; row j is a negative for every row i != j.
        positive_ids: (B,) catalogue indices of the positives (equal ids are not negatives of each other).
        positive_logq: (B,) log of the expected times each positive is drawn as an in-batch candidate.
        negatives: (M, D) embeddings of uniformly sampled entities.
        negative_ids: (M,) their catalogue indices.
        negative_logq: log of the expected times a uniform negative is drawn.
        temperature: softmax temperature.
        weights: (B,) per-sample loss weights (None: every row weighs 1).
        hard: (B, H, D) each row's hard negatives (entities the current model scores high for it).
        hard_ids: (B, H) their catalogue indices (one equal to the row's positive is masked).
        hard_logq: log of the expected times a hard negative is drawn (its uniform pool's share).

    Returns:
        Scalar (weighted) mean cross-entropy of each query against its positive.
    """
    in_batch = query @ positives.T / temperature - positive_logq[None, :]  # (B, B)
    hits = positive_ids[None, :] == positive_ids[:, None]
    in_batch = in_batch.masked_fill(hits & ~torch.eye(len(query), dtype=torch.bool, device=query.device), float("-inf"))
    sampled = query @ negatives.T / temperature - negative_logq  # (B, M)
    sampled = sampled.masked_fill(negative_ids[None, :] == positive_ids[:, None], float("-inf"))
    logits = torch.cat([in_batch, sampled], dim=1)  # (B, B + M)
    if hard is not None and hard_ids is not None:
        own = torch.einsum("bd,bhd->bh", query, hard) / temperature - hard_logq  # (B, H)
        own = own.masked_fill(hard_ids == positive_ids[:, None], float("-inf"))
        logits = torch.cat([logits, own], dim=1)  # (B, B + M + H)
    target = torch.arange(len(query), device=query.device)
    return weighted_mean(F.cross_entropy(logits, target, reduction="none"), weights)


def masked_objective_losses(
    logits: torch.Tensor, labels: torch.Tensor, binary: Sequence[bool], weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-objective (weighted) mean losses over the rows where the label is observed.

    Args:
        logits: (B, O) predictions (logits for binary objectives, values for regression).
        labels: (B, O) targets, NaN where unobserved (a canvas without the objective, or not logged).
        binary: (O,) True for binary (BCE), False for regression (MSE).
        weights: (B, O) per-sample loss weights (None: every row weighs 1); each objective's loss is then
            ``sum(w * loss) / sum(w)`` over its observed rows.

    Returns:
        (losses (O,), counts (O,) observed rows); an objective with no observed row has loss 0 and count 0.
    """
    mask = ~torch.isnan(labels)
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    is_binary = torch.tensor(binary, dtype=torch.bool, device=logits.device)[None, :].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, safe, reduction="none")
    mse = (logits - safe) ** 2
    per_row = torch.where(is_binary, bce, mse) * mask
    counts = mask.sum(dim=0)
    if weights is None:
        return per_row.sum(dim=0) / counts.clamp(min=1), counts
    w = weights * mask
    return (per_row * w).sum(dim=0) / w.sum(dim=0).clamp(min=1e-12), counts


class FixedWeighting(nn.Module):
    """sum_k w_k * L_k over the tasks present in the batch."""

    weights: torch.Tensor

    def __init__(self, weights: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32))

    def forward(self, losses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return (self.weights * losses * present).sum()


class UncertaintyWeighting(nn.Module):
    """sum_k exp(-s_k) * L_k + s_k with learned log-variances s_k (homoscedastic uncertainty)."""

    def __init__(self, n_tasks: int) -> None:
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(n_tasks))

    def forward(self, losses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return ((torch.exp(-self.log_vars) * losses + self.log_vars) * present).sum()
