"""Sequence encoders of a history field: the user's recent entities in order -> one vector per position.

A history arrives left-aligned and 0-padded: ``ids[b, :n_b]`` are the ``n_b`` most recent entities,
oldest first, most recent at ``n_b - 1``. Every encoder is causal: the output at position ``t`` reads
positions ``0..t`` only. Training therefore gets a prediction for every prefix of a history from ONE
forward pass (each position predicts the next entity, as in SASRec), and serving reads the output at the
last valid position, which is exactly the prefix the training saw. Because the history is left-aligned,
a prefix of length ``t + 1`` has the same positions in training and serving.

Kinds:
- ``mean``: the running mean of the embeddings (order-free; the cheapest);
- ``gru``: a one-layer GRU (GRU4Rec);
- ``transformer``: causal self-attention with learned position embeddings (SASRec).

The entity embeddings are the item tower's own table (passed in as vectors), so what the history says
about an entity and what the catalogue says about it live in one space.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SEQUENCE_ENCODERS", "SequenceEncoder"]

SEQUENCE_ENCODERS = ("mean", "gru", "transformer")


class SequenceEncoder(nn.Module):
    """(B, L, E) embeddings of a left-aligned history + (B, L) validity -> (B, L, E) causal outputs.

    Args:
        kind: "mean", "gru" or "transformer".
        dim: embedding size E (the entity table's).
        max_len: longest history (position embeddings of the transformer).
        layers, heads: transformer depth and attention heads (``dim`` must divide by ``heads``).
        dropout: dropout on the input embeddings and inside the transformer (regularises the id table
            as seen through histories: embedding dropout).
    """

    def __init__(
        self, kind: str, dim: int, max_len: int, *, layers: int = 2, heads: int = 2, dropout: float = 0.2
    ) -> None:
        super().__init__()
        if kind not in SEQUENCE_ENCODERS:
            raise ValueError(f"sequence encoder {kind!r} is not one of {SEQUENCE_ENCODERS}")
        self.kind, self.dim, self.max_len = kind, dim, max_len
        self.dropout = nn.Dropout(dropout)
        self.empty = nn.Parameter(torch.zeros(dim))  # the output for a history with no entity at all
        if kind == "gru":
            self.gru = nn.GRU(dim, dim, batch_first=True)
        elif kind == "transformer":
            self.positions = nn.Embedding(max_len, dim)
            nn.init.normal_(self.positions.weight, std=0.05)
            self.norm = nn.LayerNorm(dim)
            layer = nn.TransformerEncoderLayer(
                dim, heads, dim_feedforward=4 * dim, dropout=dropout, batch_first=True, norm_first=True
            )
            self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.out_norm = nn.LayerNorm(dim)

    def forward(self, emb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Per-position outputs (B, L, E); positions past a history's end hold values nobody reads."""
        x = self.dropout(emb * valid[..., None])
        if self.kind == "mean":
            counts = valid.cumsum(dim=1).clamp(min=1).to(x.dtype)[..., None]  # (B, L, 1)
            return x.cumsum(dim=1) / counts
        if self.kind == "gru":
            out, _ = self.gru(x)
            return out
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(f"history of {length} positions is longer than the encoder's {self.max_len}")
        x = self.norm(x + self.positions.weight[:length][None])
        # left-aligned histories: a valid position only attends to earlier positions, all valid, so the
        # causal mask alone suffices (no key-padding mask, hence no all-masked row and no NaN)
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=x.device, dtype=x.dtype)
        return self.out_norm(self.blocks(x, mask=causal, is_causal=True))

    def last(self, emb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, L, E), (B, L) -> (B, E): the output at each history's last valid position (``empty`` when
        the history has none)."""
        n = valid.sum(dim=1)  # (B,)
        out = self.forward(emb, valid)
        # a gather, not out[arange(B), idx]: the same values, and a graph whose batch stays symbolic when
        # exported (torch.export specialises the advanced indexing's arange to the example's batch size)
        at = (n - 1).clamp(min=0).to(torch.long)[:, None, None].expand(-1, 1, out.shape[2])  # (B, 1, E)
        at_end = out.gather(1, at).squeeze(1)
        return torch.where((n > 0)[:, None], at_end, self.empty.expand_as(at_end))
