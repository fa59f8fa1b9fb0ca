"""The one multi-task model: context tower + item tower (retrieval) + multi-task ranker (one tower per
canvas, one head per objective) + each canvas's blend of objectives into a ranking score."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monorec.config import SOURCE_NAMES, ProjectConfig
from monorec.data.features import Featurizer
from monorec.models.multitask import TaskTowers, build_bottom
from monorec.models.sequence import SequenceEncoder
from monorec.models.towers import ContextEncoder, EmbeddingTables, FieldInput, ItemEncoder

__all__ = ["MonorecModel", "build_model"]

Tensors = Mapping[str, torch.Tensor]


class MonorecModel(nn.Module):
    """Args (all flat; see :func:`build_model` for the config -> arguments mapping):
    vocab_sizes: embedding table key -> rows.
    fields: how each context field is embedded.
    n_tasks: canvases (task_type values).
    objective_is_binary: (O,) kind of each objective head.
    blend: (T, O) weight of each objective in each canvas's ranking score.
    embedding_dim, retrieval_dim, text_buckets, tower_hidden, bottom, experts, task_experts,
    ple_levels, expert_hidden, canvas_tower_hidden, dropout: sizes and kinds of the parts.
    sequence_encoder: how entity histories are read ("mean", "gru", "transformer"; None: an unordered
        mean bag, the format of models saved before sequence encoders), with sequence_length (longest
        history), sequence_layers, sequence_heads and sequence_dropout.
    sparse_tables: embedding tables with sparse (row-wise) gradients (see monorec.models.towers).
    source_inputs: the offline sources (of lexical, co-occurrence, popular) whose score of the candidate
        the ranker reads (whether the source proposed it, and the score, see :func:`source_inputs`); none
        for models saved before it.
    source_weights: (T, S) weight of each candidate source's score (``SOURCE_NAMES`` order, the embedding
        source's score being the retrieval score context . entity) in each canvas's ranking score (default
        0); ``retrieval_weight`` (T,) is the embedding column alone, as models saved before sources had it.
    """

    objective_is_binary: torch.Tensor  # (O,) buffer
    blend: torch.Tensor  # (T, O) buffer
    source_weights: torch.Tensor  # (T, S) buffer

    def __init__(
        self,
        *,
        vocab_sizes: Mapping[str, int],
        fields: Sequence[FieldInput],
        n_tasks: int,
        objective_is_binary: Sequence[bool],
        blend: Sequence[Sequence[float]],
        embedding_dim: int = 32,
        retrieval_dim: int = 64,
        text_buckets: int = 32768,
        tower_hidden: Sequence[int] = (128,),
        bottom: str = "mmoe",
        experts: int = 4,
        task_experts: int = 1,
        ple_levels: int = 2,
        expert_hidden: Sequence[int] = (128,),
        canvas_tower_hidden: Sequence[int] = (64,),
        dropout: float = 0.0,
        sequence_encoder: str | None = None,
        sequence_length: int = 50,
        sequence_layers: int = 2,
        sequence_heads: int = 2,
        sequence_dropout: float = 0.2,
        sparse_tables: bool = True,
        source_inputs: Sequence[str] = (),
        source_weights: Sequence[Sequence[float]] | None = None,
        retrieval_weight: Sequence[float] | None = None,
        text_match: bool = False,
        category_match: bool = False,
    ) -> None:
        super().__init__()
        self.tables = EmbeddingTables(vocab_sizes, embedding_dim, text_buckets, n_tasks, sparse=sparse_tables)
        sequence = None
        if sequence_encoder is not None and any(f.kind == "id_list" and f.table == "entity" for f in fields):
            sequence = SequenceEncoder(
                sequence_encoder,
                embedding_dim,
                sequence_length,
                layers=sequence_layers,
                heads=sequence_heads,
                dropout=sequence_dropout,
            )
        self.context_encoder = ContextEncoder(self.tables, fields, tower_hidden, retrieval_dim, n_tasks, sequence)
        self.item_encoder = ItemEncoder(self.tables, tower_hidden, retrieval_dim)
        unknown = sorted(set(source_inputs) - set(SOURCE_NAMES[1:]))
        if unknown:
            raise ValueError(f"source_inputs: unknown offline source(s) {unknown} (known: {SOURCE_NAMES[1:]})")
        # the columns of the (B, S) source scores the ranker reads, in SOURCE_NAMES order
        self.source_columns = [j for j, name in enumerate(SOURCE_NAMES) if name in set(source_inputs)]
        rank_in = self.context_encoder.feature_dim + self.item_encoder.feature_dim + retrieval_dim + 1
        rank_in += 2 * len(self.source_columns)
        # the context features' slices of the text fields (the ranker matches each with the title)
        self.text_slices = [
            slice(i * embedding_dim, (i + 1) * embedding_dim)
            for i, f in enumerate(fields)
            if text_match and f.kind == "text"
        ]
        rank_in += len(self.text_slices) * (embedding_dim + 1)
        # the context features' slices of the fields over the catalogue's categories (browse's category)
        self.category_slices = [
            slice(i * embedding_dim, (i + 1) * embedding_dim)
            for i, f in enumerate(fields)
            if category_match and f.table == "category" and f.kind in ("id", "categorical")
        ]
        rank_in += len(self.category_slices) * (embedding_dim + 1)
        self.bottom = build_bottom(
            bottom,
            in_dim=rank_in,
            hidden=expert_hidden,
            n_tasks=n_tasks,
            experts=experts,
            task_experts=task_experts,
            levels=ple_levels,
            dropout=dropout,
        )
        self.towers = TaskTowers(self.bottom.out_dim, canvas_tower_hidden, n_tasks, len(objective_is_binary), dropout)
        self.register_buffer("objective_is_binary", torch.tensor(list(objective_is_binary), dtype=torch.bool))
        self.register_buffer("blend", torch.tensor([list(row) for row in blend], dtype=torch.float32))
        # (T, S) weight of each source's score beside the ranker's blend, per canvas: chosen on validation after
        # training (monorec.evaluation.fusion), kept in model.json (not a weight: no gradient ever moves it)
        weights = torch.zeros(n_tasks, len(SOURCE_NAMES))
        if source_weights is not None:
            weights = torch.tensor([list(row) for row in source_weights], dtype=torch.float32)
        elif retrieval_weight is not None:
            weights[:, 0] = torch.tensor(list(retrieval_weight), dtype=torch.float32)
        self.register_buffer("source_weights", weights, persistent=False)
        self.n_tasks = n_tasks

    # ------------------------------------------------------------------------------------ towers

    def encode_context(self, ctx: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
        """Context arrays -> (features (B, F_c), embedding (B, D))."""
        feats, emb = self.context_encoder(ctx)
        return feats, emb

    def encode_items(self, items: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
        """Item arrays -> (features (N, F_i), embedding (N, D))."""
        feats, emb = self.item_encoder(items)
        return feats, emb

    # ------------------------------------------------------------------------------------ ranker

    def rank(
        self,
        ctx_feats: torch.Tensor,
        ctx_emb: torch.Tensor,
        item_feats: torch.Tensor,
        item_emb: torch.Tensor,
        task: torch.Tensor,
        sources: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Objective logits for (context, entity) pairs: all inputs row-aligned (B, ...) -> (B, O).
        ``sources`` (B, S): each source's score of the entity for its request (0: not proposed; None: no
        source proposed any), read by a model built with ``source_inputs``."""
        return self.towers.for_rows(self.shared_ranking(ctx_feats, ctx_emb, item_feats, item_emb, sources), task)

    def shared_ranking(
        self,
        ctx_feats: torch.Tensor,
        ctx_emb: torch.Tensor,
        item_feats: torch.Tensor,
        item_emb: torch.Tensor,
        sources: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The ranker's input row by row, through the multi-task bottom: (B, ...) -> (T, B, H), each task's
        view of each pair (what :meth:`rank`'s canvas towers read). The input is the context features
        followed by :meth:`pair_inputs`."""
        pairs = self.pair_inputs(ctx_feats, ctx_emb, item_feats, item_emb, sources)
        return self.bottom(torch.cat([ctx_feats, pairs], dim=1))

    def pair_inputs(
        self,
        ctx_feats: torch.Tensor,
        ctx_emb: torch.Tensor,
        item_feats: torch.Tensor,
        item_emb: torch.Tensor,
        sources: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What the ranker reads of each (context, entity) pair beyond the context features: the entity's
        features, the two embeddings' product and dot, the text matches and the sources read, row by row:
        (B, ...) -> (B, F_r - F_c). ``ctx_feats`` is read only for the matches (``text_match``,
        ``category_match``)."""
        dot = (ctx_emb * item_emb).sum(dim=1, keepdim=True)
        parts = [item_feats, ctx_emb * item_emb, dot, *self.text_matches(ctx_feats, item_feats)]
        parts += self.category_matches(ctx_feats, item_feats)
        if self.source_columns:
            if sources is None:
                sources = dot.new_zeros(len(dot), len(SOURCE_NAMES))
            parts.append(source_inputs(sources[:, self.source_columns]))
        return torch.cat(parts, dim=1)

    def text_matches(self, ctx_feats: torch.Tensor, item_feats: torch.Tensor) -> list[torch.Tensor]:
        """How each text field of the context matches the entity's title, row by row: per field, the
        element-wise product of the two mean word embeddings (B, E) and their cosine (B, 1). Query words
        and title words share one table, so a word in both adds its own squared norm to the product: the
        ranker sees word overlap directly instead of learning a product from two inputs side by side. Rows
        without the text get zeros."""
        title = item_feats[:, self.item_encoder.title_slice]  # (B, E)
        out = []
        for part in self.text_slices:
            text = ctx_feats[:, part]  # (B, E)
            # a context without this text (home has no query) holds exactly the learned ``text_missing``
            # vector there: its "match" would be a learned title score on canvases that never searched
            present = (text != self.tables.text_missing).any(dim=1, keepdim=True).to(text.dtype)  # (B, 1)
            cosine = F.cosine_similarity(text, title, dim=1, eps=1e-6)[:, None]
            out += [present * text * title, present * cosine]
        return out

    def category_matches(self, ctx_feats: torch.Tensor, item_feats: torch.Tensor) -> list[torch.Tensor]:
        """How each category field of the context (browse's category) matches the entity's categories, row by
        row: the element-wise product of the field's category embedding and the mean of the entity's (B, E),
        and their cosine (B, 1). Both come from the one category table, so the entity's own category adds
        its squared norm: "is the candidate in the browsed category" is one input away instead of a product
        the MLP must learn from two inputs side by side. Rows without the field get zeros."""
        if not self.category_slices:  # off (the default): nothing looked up on the ranker's path
            return []
        categories = item_feats[:, self.item_encoder.category_slice]  # (B, E)
        missing = self.tables.lookup("category", torch.zeros(1, dtype=torch.long, device=item_feats.device))
        out = []
        for part in self.category_slices:
            wanted = ctx_feats[:, part]  # (B, E)
            present = (wanted != missing).any(dim=1, keepdim=True).to(wanted.dtype)  # index 0: the "missing" row
            cosine = F.cosine_similarity(wanted, categories, dim=1, eps=1e-6)[:, None]
            out += [present * wanted * categories, present * cosine]
        return out

    def blend_scores(
        self, logits: torch.Tensor, task: torch.Tensor, sources: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, O) logits, (B,) task -> (B,) ranking score: sum of blend weight * objective in (0, 1), plus,
        when given, the canvas's ``source_weights`` times the (B, S) source scores (0 where a source did not
        propose the entity; column 0, the retrieval score, is known for every entity)."""
        score = (torch.sigmoid(logits) * self.blend[task]).sum(dim=1)
        if sources is not None:
            score = score + (self.source_weights[task] * sources).sum(dim=1)
        return score

    def forward(
        self, ctx: Tensors, items: Tensors, sources: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row-aligned contexts and entities (and (B, S) source scores, see :meth:`rank`) -> (context emb
        (B, D), entity emb (B, D), logits (B, O))."""
        cf, ce = self.encode_context(ctx)
        itf, ie = self.encode_items(items)
        return ce, ie, self.rank(cf, ce, itf, ie, ctx["task_type"], sources)


def source_inputs(scores: torch.Tensor) -> torch.Tensor:
    """(B, S') scores of the sources the ranker reads (0 where a source did not propose the entity) ->
    (B, 2 S') ranker inputs: per source, 1.0 if it proposed the entity, and ``log1p`` of its score (BM25
    runs to tens, the others stay small: one log scale keeps every input in a few units)."""
    scores = scores.clamp(min=0.0)
    return torch.cat([(scores > 0).to(scores.dtype), torch.log1p(scores)], dim=1)


def model_kwargs(config: ProjectConfig, featurizer: Featurizer) -> dict[str, object]:
    """The flat constructor arguments for a config and a fitted featurizer (JSON-serializable)."""
    sizes = featurizer.vocab_sizes()
    fields = []
    for f in config.fields:
        table = None
        if f.kind in ("id", "categorical", "id_list"):
            table = f.vocabulary if f.vocabulary else f"field:{f.name}"
            if table not in sizes:
                sizes[table] = 2  # a field absent from training: only the sentinels
        fields.append({"name": f.name, "kind": f.kind, "table": table})
    objectives = [o.name for o in config.objectives]
    m = config.model
    return {
        "vocab_sizes": sizes,
        "fields": fields,
        "n_tasks": len(config.canvases),
        "objective_is_binary": [o.kind == "binary" for o in config.objectives],
        "blend": [[c.blend.get(o, 0.0) for o in objectives] for c in config.canvases],
        "embedding_dim": m.embedding_dim,
        "retrieval_dim": m.retrieval_dim,
        "text_buckets": m.text_buckets,
        "tower_hidden": list(m.tower_hidden),
        "bottom": m.bottom,
        "experts": m.experts,
        "task_experts": m.task_experts,
        "ple_levels": m.ple_levels,
        "expert_hidden": list(m.expert_hidden),
        "canvas_tower_hidden": list(m.canvas_tower_hidden),
        "dropout": m.dropout,
        "sequence_encoder": m.sequence_encoder,
        "sequence_length": max([f.max_tokens + 1 for f in config.fields if f.kind == "id_list"], default=1),
        "sequence_layers": m.sequence_layers,
        "sequence_heads": m.sequence_heads,
        "sequence_dropout": m.sequence_dropout,
        "source_inputs": list(m.source_inputs),
        "text_match": m.text_match,
        "category_match": m.category_match,
    }


def build_model(kwargs: Mapping[str, object]) -> MonorecModel:
    """Builds the model from :func:`model_kwargs` output (also how a saved version is rebuilt)."""
    args = dict(kwargs)
    args["fields"] = [FieldInput(**f) for f in args["fields"]]  # type: ignore[attr-defined]
    return MonorecModel(**args)  # type: ignore[arg-type]
