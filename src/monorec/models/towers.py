"""Embedding tables and the two towers.

One :class:`EmbeddingTables` holds every table; the context and item encoders both read from it, so a
``source_item_id`` shares the item tower's entity embeddings, a ``category`` context field shares the
catalogue's category embeddings and query words share the title words' text buckets. The tables are
``sparse`` when a step touches few of their rows (a sampled softmax over a large catalogue): on CPU a dense
optimizer would then touch every row of every table at every step. Under the full softmax every entity
and its title words are in every step, and dense gradients are far cheaper than coalescing sparse ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from monorec.models.layers import MLP
from monorec.models.sequence import SequenceEncoder

__all__ = ["ContextEncoder", "EmbeddingTables", "FieldInput", "ItemEncoder"]


@dataclass(frozen=True)
class FieldInput:
    """How one context field is embedded: kind (id/categorical/text/numeric) and its table key."""

    name: str
    kind: str
    table: str | None  # "entity", "category", "field:<name>"; None for text and numeric


class EmbeddingTables(nn.Module):
    """Every embedding table of the model. Index 0 is the learned "missing" sentinel, 1 "unknown"."""

    def __init__(
        self, sizes: Mapping[str, int], dim: int, text_buckets: int, n_tasks: int, *, sparse: bool = True
    ) -> None:
        super().__init__()
        self.tables = nn.ModuleDict(
            {key.replace(":", "__"): nn.Embedding(n, dim, sparse=sparse) for key, n in sizes.items()}
        )
        self.text = nn.Embedding(text_buckets, dim, sparse=sparse)  # 0 = padding (excluded from means)
        self.text_missing = nn.Parameter(torch.zeros(dim))
        self.task = nn.Embedding(n_tasks, dim, sparse=sparse)
        for emb in [*self.tables.values(), self.text, self.task]:
            nn.init.normal_(cast(nn.Embedding, emb).weight, std=0.05)
        self.dim, self.sparse = dim, sparse

    def lookup(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """(B,) ids -> (B, dim)."""
        return self.tables[table.replace(":", "__")](ids)

    def bag(self, table: str | None, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids with 0 as padding -> (B, dim) mean; an all-padding text row gets the learned
        ``text_missing`` vector instead of zeros."""
        weight = self.text.weight if table is None else cast(nn.Embedding, self.tables[table.replace(":", "__")]).weight
        if torch.compiler.is_exporting():
            # the same mean as a gather and a masked sum: the ONNX exporter writes embedding_bag as a loop
            # over rows inside a loop over ids, which ONNX Runtime runs node by node (the context tower of
            # one served request 0.37 -> 0.21 ms, docs/benchmarks.md "Profile")
            present = (ids != 0).unsqueeze(2).to(weight.dtype)  # (B, L, 1)
            total = (F.embedding(ids, weight) * present).sum(dim=1)
            pooled = total / present.sum(dim=1).clamp(min=1.0)
        else:
            pooled = F.embedding_bag(ids, weight, mode="mean", padding_idx=0, sparse=self.sparse)
        if table is None:
            empty = (ids == 0).all(dim=1, keepdim=True).to(pooled.dtype)
            pooled = pooled + empty * self.text_missing
        return pooled


class ContextEncoder(nn.Module):
    """Unified context -> (features (B, F_c), embedding (B, D) of unit norm).

    A trunk shared by every canvas, then one linear head per canvas (``n_tasks`` heads): a "search" query
    and a "home" visit mean different things, and their own heads keep them from fighting over one map.
    Entity histories (``id_list`` fields over the entity table) go through the ``sequence`` encoder when
    there is one (order matters), other id lists are averaged.
    """

    def __init__(
        self,
        tables: EmbeddingTables,
        fields: Sequence[FieldInput],
        hidden: Sequence[int],
        out_dim: int,
        n_tasks: int,
        sequence: SequenceEncoder | None = None,
    ) -> None:
        super().__init__()
        self.tables = tables
        self.fields = tuple(fields)
        self.numeric = nn.ModuleDict({f.name: nn.Linear(2, tables.dim) for f in fields if f.kind == "numeric"})
        self.feature_dim = tables.dim * (len(self.fields) + 1)
        self.trunk = MLP(self.feature_dim, hidden)
        self.heads = nn.Linear(self.trunk.out_dim, out_dim * n_tasks)  # all canvases' heads in one matmul
        self.out_dim, self.n_tasks = out_dim, n_tasks
        self.sequence = sequence

    def is_sequence(self, f: FieldInput) -> bool:
        """Whether the field is an entity history read in order by the sequence encoder."""
        return self.sequence is not None and f.kind == "id_list" and f.table == "entity"

    def _history(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) left-aligned entity indices -> ((B, L, E) embeddings, (B, L) validity)."""
        return self.tables.lookup("entity", ids), ids > 0

    def _parts(self, ctx: Mapping[str, torch.Tensor], skip: str | None = None) -> list[torch.Tensor]:
        """Each field's (B, E) part, in field order, then the canvas's; ``skip``'s part is left out."""
        parts = []
        for f in self.fields:
            x = ctx[f.name]
            if f.name == skip:
                continue
            if f.kind == "text":
                parts.append(self.tables.bag(None, x))  # (B, L) -> (B, E)
            elif f.kind == "numeric":
                parts.append(self.numeric[f.name](x))  # (B, 2) -> (B, E)
            elif self.is_sequence(f):
                assert self.sequence is not None
                parts.append(self.sequence.last(*self._history(x)))  # (B, L) -> (B, E), in order
            elif f.kind == "id_list":
                assert f.table is not None
                parts.append(self.tables.bag(f.table, x))  # (B, L) -> (B, E), mean of the ids
            else:
                assert f.table is not None
                parts.append(self.tables.lookup(f.table, x))  # (B,) -> (B, E)
        parts.append(self.tables.task(ctx["task_type"]))
        return parts

    def features(self, ctx: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat(self._parts(ctx), dim=1)  # (B, F_c)

    def _embed(self, feats: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """(..., F_c) features, (...,) canvas -> (..., D) unit-norm embeddings from the canvas's head."""
        heads = self.heads(self.trunk(feats)).unflatten(-1, (self.n_tasks, self.out_dim))  # (..., T, D)
        own = torch.gather(heads, -2, task[..., None, None].expand(*task.shape, 1, self.out_dim)).squeeze(-2)
        return F.normalize(own, dim=-1)

    def forward(self, ctx: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(ctx)
        return feats, self._embed(feats, ctx["task_type"])

    def every_prefix(self, ctx: Mapping[str, torch.Tensor], field: str) -> torch.Tensor:
        """The context embedding after every prefix of an entity history: (B, L, D).

        Position ``t`` is the embedding of the same context whose ``field`` holds only the first ``t + 1``
        entities of ``ctx[field]`` (B, L); the other fields are the row's own, computed once and broadcast.
        One causal pass gives all of them: training on every position of a sequence without copying a row
        per prefix.
        """
        assert self.sequence is not None
        ids = ctx[field]
        at = next(i for i, f in enumerate(self.fields) if f.name == field)
        others = self._parts(ctx, skip=field)  # (B, E) each
        length = ids.shape[1]
        spread = [p[:, None, :].expand(-1, length, -1) for p in others]
        per_position = self.sequence(*self._history(ids))  # (B, L, E)
        feats = torch.cat([*spread[:at], per_position, *spread[at:]], dim=-1)  # (B, L, F_c)
        return self._embed(feats, ctx["task_type"][:, None].expand(-1, length))


class ItemEncoder(nn.Module):
    """Entity features -> (features (N, F_i), embedding (N, D) of unit norm)."""

    def __init__(self, tables: EmbeddingTables, hidden: Sequence[int], out_dim: int, n_numeric: int = 1) -> None:
        super().__init__()
        self.tables = tables
        self.numeric = nn.Linear(n_numeric, tables.dim)
        self.feature_dim = tables.dim * 5
        self.category_slice = slice(2 * tables.dim, 3 * tables.dim)  # the categories' part of the features
        self.title_slice = slice(3 * tables.dim, 4 * tables.dim)  # the title's part of the features
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
