"""Reference recommenders of the standard protocol (Q3), written from their papers, outside monorec:
Pop, ItemKNN (item-item cosine), EASE (Steck 2019, closed form) and SASRec (Kang & McAuley 2018, causal
self-attention trained with the full-softmax cross-entropy on every position, as RecBole's SASRec with
``loss_type = "CE"``).

Every ``scores`` method maps (U, I) user-item input rows (the user's earlier items, 0/1) or sequences to
(U, I) scores over the full item set; the caller masks the earlier items and takes the top 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def popularity_scores(train: np.ndarray, users: int) -> np.ndarray:
    """(U, I) 0/1 interaction matrix -> (users, I): every user gets the items' training counts."""
    counts = train.sum(axis=0).astype(np.float32)
    return np.broadcast_to(counts, (users, len(counts)))


def itemknn_scores(train: np.ndarray, inputs: np.ndarray, neighbours: int = 100) -> np.ndarray:
    """Item-item cosine similarity over training users, each item keeping its ``neighbours`` most similar;
    a user's score for an item is the sum of its similarities to the user's input items."""
    x = train.astype(np.float32)
    norms = np.sqrt((x * x).sum(axis=0))
    norms[norms == 0] = 1.0
    sim = (x.T @ x) / norms[:, None] / norms[None, :]
    np.fill_diagonal(sim, 0.0)
    if neighbours < sim.shape[0]:
        cut = np.partition(sim, -neighbours, axis=1)[:, -neighbours][:, None]
        sim = np.where(sim >= cut, sim, 0.0)
    return inputs.astype(np.float32) @ sim.T


def ease_weights(train: np.ndarray, lam: float) -> np.ndarray:
    """EASE's item-item matrix B = I - P diagMat(1 / diag(P)) with P = (X^T X + lam I)^-1, diag(B) = 0."""
    x = train.astype(np.float64)
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b.astype(np.float32)


@dataclass
class SASRecSpec:
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.5  # RecBole's SASRec default (hidden and attention dropout)
    max_len: int = 50
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 200
    patience: int = 10
    seed: int = 0


class SASRec(nn.Module):
    """Item ids (B, L), left-aligned (oldest first, 0 = padding after the end) -> (B, L, d) causal states."""

    def __init__(self, n_items: int, spec: SASRecSpec) -> None:
        super().__init__()
        self.items = nn.Embedding(n_items + 1, spec.dim, padding_idx=0)
        self.positions = nn.Embedding(spec.max_len, spec.dim)
        self.norm = nn.LayerNorm(spec.dim)
        self.dropout = nn.Dropout(spec.dropout)
        layer = nn.TransformerEncoderLayer(
            spec.dim, spec.heads, 4 * spec.dim, spec.dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.blocks = nn.TransformerEncoder(layer, spec.layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(spec.dim)
        nn.init.normal_(self.items.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        length = seq.shape[1]
        x = self.items(seq) * math.sqrt(self.items.embedding_dim) + self.positions.weight[:length][None]
        x = self.dropout(self.norm(x))
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=seq.device)
        # left-aligned: a real position only sees earlier, real, positions; padding comes after and is never
        # read, so the causal mask alone is exact (a key-padding mask would give padded rows NaN)
        return self.out_norm(self.blocks(x, mask=causal, is_causal=True))

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., I + 1) scores over every item (column 0, padding, is never a target)."""
        return states @ self.items.weight.T


def _aligned(seqs: list[list[int]], length: int) -> torch.Tensor:
    """The last ``length`` items of each sequence at positions 0..n-1, 0-padded after."""
    out = torch.zeros(len(seqs), length, dtype=torch.long)
    for r, s in enumerate(seqs):
        s = s[-length:]
        if s:
            out[r, : len(s)] = torch.tensor(s)
    return out


def _windows(sequences: list[list[int]], length: int) -> list[list[int]]:
    """Every training sequence cut into windows of ``length + 1`` items from its end (consecutive windows
    share one item), so that every transition is a target exactly once per epoch."""
    out = []
    for s in sequences:
        end = len(s)
        while end >= 2:
            out.append(s[max(0, end - length - 1) : end])
            end -= length
    return out


def train_sasrec(
    n_items: int,
    train_seqs: list[list[int]],
    valid_inputs: list[list[int]],
    valid_targets: np.ndarray,
    spec: SASRecSpec,
    evaluate: object,
) -> tuple[SASRec, list[dict[str, float]]]:
    """Trains on every position of the training sequences (items 1..n_items), keeps the epoch with the best
    validation NDCG@10 (``evaluate(model, inputs, targets) -> ndcg``), stops after ``patience`` epochs."""
    torch.manual_seed(spec.seed)
    model = SASRec(n_items, spec)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    windows = _windows(train_seqs, spec.max_len)
    gen = torch.Generator().manual_seed(spec.seed)
    best, best_state, stale, curve = -1.0, None, 0, []
    for epoch in range(spec.epochs):
        model.train()
        order = torch.randperm(len(windows), generator=gen).tolist()
        total = 0.0
        for start in range(0, len(order), spec.batch_size):
            batch = [windows[i] for i in order[start : start + spec.batch_size]]
            seq = _aligned([w[:-1] for w in batch], spec.max_len)
            target = _aligned([w[1:] for w in batch], spec.max_len)
            states = model(seq)
            mask = target > 0
            loss = F.cross_entropy(model.logits(states[mask]), target[mask])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        ndcg = evaluate(model, valid_inputs, valid_targets)  # type: ignore[operator]
        curve.append({"epoch": epoch, "loss": total / len(windows), "valid_ndcg@10": ndcg})
        if ndcg > best:
            best, stale = ndcg, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= spec.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    return model.eval(), curve


@torch.no_grad()
def sasrec_scores(model: SASRec, inputs: list[list[int]], max_len: int, batch: int = 512) -> np.ndarray:
    """(U,) input sequences -> (U, I) scores of items 1..I (column j = item j + 1)."""
    model.eval()
    out = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start : start + batch]
        seq = _aligned(chunk, max_len)
        last = torch.tensor([min(len(s), max_len) - 1 for s in chunk])
        out.append(model.logits(model(seq)[torch.arange(len(chunk)), last])[:, 1:].numpy())
    return np.concatenate(out)
