"""Embedding tables and the two towers.

One :class:`EmbeddingTables` holds every table; the context and item encoders both read from it, so a
``source_item_id`` shares the item tower's entity embeddings, a ``category`` context field shares the
catalogue's category embeddings and query words share the title words' text buckets. All tables are
``sparse``: on CPU a dense optimizer would touch every row of every table at every step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from monorec.models.layers import MLP

__all__ = ["ContextEncoder", "EmbeddingTables", "FieldInput", "ItemEncoder"]


@dataclass(frozen=True)
class FieldInput:
    """How one context field is embedded: kind (id/categorical/text/numeric) and its table key."""

    name: str
    kind: str
    table: str | None  # "entity", "category", "field:<name>"; None for text and numeric


class EmbeddingTables(nn.Module):
    """Every embedding table of the model. Index 0 is the learned "missing" sentinel, 1 "unknown"."""

    def __init__(self, sizes: Mapping[str, int], dim: int, text_buckets: int, n_tasks: int) -> None:
        super().__init__()
        self.tables = nn.ModuleDict(
            {key.replace(":", "__"): nn.Embedding(n, dim, sparse=True) for key, n in sizes.items()}
        )
        self.text = nn.Embedding(text_buckets, dim, sparse=True)  # 0 = padding (excluded from means)
        self.text_missing = nn.Parameter(torch.zeros(dim))
        self.task = nn.Embedding(n_tasks, dim, sparse=True)
        for emb in [*self.tables.values(), self.text, self.task]:
            nn.init.normal_(cast(nn.Embedding, emb).weight, std=0.05)
        self.dim = dim

    def lookup(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """(B,) ids -> (B, dim)."""
        return self.tables[table.replace(":", "__")](ids)

    def bag(self, table: str | None, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids with 0 as padding -> (B, dim) mean; an all-padding text row gets the learned
        ``text_missing`` vector instead of zeros."""
        weight = self.text.weight if table is None else cast(nn.Embedding, self.tables[table.replace(":", "__")]).weight
        pooled = F.embedding_bag(ids, weight, mode="mean", padding_idx=0, sparse=True)
        if table is None:
            empty = (ids == 0).all(dim=1, keepdim=True).to(pooled.dtype)
            pooled = pooled + empty * self.text_missing
        return pooled


class ContextEncoder(nn.Module):
    """Unified context -> (features (B, F_c), embedding (B, D) of unit norm).

    A trunk shared by every canvas, then one linear head per canvas (``n_tasks`` heads): a "search" query
    and a "home" visit mean different things, and their own heads keep them from fighting over one map.
    """

    def __init__(
        self, tables: EmbeddingTables, fields: Sequence[FieldInput], hidden: Sequence[int], out_dim: int, n_tasks: int
    ) -> None:
        super().__init__()
        self.tables = tables
        self.fields = tuple(fields)
        self.numeric = nn.ModuleDict({f.name: nn.Linear(2, tables.dim) for f in fields if f.kind == "numeric"})
        self.feature_dim = tables.dim * (len(self.fields) + 1)
        self.trunk = MLP(self.feature_dim, hidden)
        self.heads = nn.Linear(self.trunk.out_dim, out_dim * n_tasks)  # all canvases' heads in one matmul
        self.out_dim, self.n_tasks = out_dim, n_tasks

    def features(self, ctx: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for f in self.fields:
            x = ctx[f.name]
            if f.kind == "text":
                parts.append(self.tables.bag(None, x))  # (B, L) -> (B, E)
            elif f.kind == "numeric":
                parts.append(self.numeric[f.name](x))  # (B, 2) -> (B, E)
            elif f.kind == "id_list":
                assert f.table is not None
                parts.append(self.tables.bag(f.table, x))  # (B, L) -> (B, E), mean of the ids
            else:
                assert f.table is not None
                parts.append(self.tables.lookup(f.table, x))  # (B,) -> (B, E)
        parts.append(self.tables.task(ctx["task_type"]))
        return torch.cat(parts, dim=1)  # (B, F_c)

    def forward(self, ctx: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(ctx)
        heads = self.heads(self.trunk(feats)).view(-1, self.n_tasks, self.out_dim)  # (B, T, D)
        own = heads[torch.arange(len(feats), device=feats.device), ctx["task_type"]]  # (B, D)
        return feats, F.normalize(own, dim=-1)


class ItemEncoder(nn.Module):
    """Entity features -> (features (N, F_i), embedding (N, D) of unit norm)."""

    def __init__(self, tables: EmbeddingTables, hidden: Sequence[int], out_dim: int, n_numeric: int = 1) -> None:
        super().__init__()
        self.tables = tables
        self.numeric = nn.Linear(n_numeric, tables.dim)
        self.feature_dim = tables.dim * 5
        self.tower = MLP(self.feature_dim, hidden, out_dim=out_dim)

    def features(self, items: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat(
            [
                self.tables.lookup("entity", items["entity"]),  # (N, E)
                self.tables.lookup("entity_type", items["entity_type"]),  # (N, E)
                self.tables.bag("category", items["categories"]),  # (N, 4) -> (N, E)
                self.tables.bag(None, items["title"]),  # (N, 24) -> (N, E)
                self.numeric(items["numeric"]),  # (N, 1) -> (N, E)
            ],
            dim=1,
        )

    def forward(self, items: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(items)
        return feats, F.normalize(self.tower(feats), dim=-1)
