"""Recommenders evaluated by the same loop: the model (retrieval then ranking) and simple baselines."""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import polars as pl
import torch

from monorec.bundle import ModelBundle, context_tensors
from monorec.config import SOURCE_NAMES
from monorec.evaluation.requests import RequestSet, entity_positions
from monorec.retrieval.sources import CandidateSources

__all__ = [
    "BM25Recommender",
    "CategoryPopularityRecommender",
    "CooccurrenceRecommender",
    "ModelRecommender",
    "PopularityRecommender",
    "Recommender",
    "top_k_excluding",
]


class Recommender(Protocol):
    catalogue_size: int

    def recommend(self, requests: RequestSet, k: int) -> np.ndarray:
        """(R, k) catalogue positions, best first."""
        ...


def top_k_excluding(scores: torch.Tensor, exclude: list[np.ndarray], k: int) -> torch.Tensor:
    """(R, N) scores -> (R, k) positions of the best, never one listed in ``exclude[r]``."""
    scores = scores.clone()
    for r, ex in enumerate(exclude):
        if len(ex):
            scores[r, torch.as_tensor(ex, device=scores.device)] = float("-inf")
    return torch.topk(scores, k=min(k, scores.shape[1]), dim=1).indices


class ModelRecommender:
    """The model's answer to a request: candidates from the canvas's sources (``[canvases.X] sources``; the
    embedding source is the exact dot product over the full catalogue), their union ranked by the canvas's
    blended ranker plus its weight of each source's score. ``rank=False`` stops after the embedding
    source's retrieval."""

    def __init__(
        self,
        bundle: ModelBundle,
        catalogue: pl.DataFrame,
        *,
        depth: int = 100,
        rank: bool = True,
        batch_size: int = 256,
        sources: CandidateSources | None = None,
    ) -> None:
        self.bundle, self.depth, self.rank, self.batch_size = bundle, depth, rank, batch_size
        self.item_feats, self.item_embs = bundle.item_embeddings(catalogue)
        self.catalogue_size = catalogue.height
        self.sources = sources if sources is not None else bundle.candidate_sources(catalogue)
        self.position_of = {e: i for i, e in enumerate(catalogue["entity_id"].to_list())}

    def retrieval_only(self) -> ModelRecommender:
        """The same recommender stopping after retrieval, sharing the encoded catalogue."""
        twin = copy.copy(self)
        twin.rank = False
        return twin

    def source_depths(self, canvas: str, depth: int) -> dict[str, int]:
        """The canvas's sources and how many candidates each proposes (the embedding source at least
        ``depth``: the evaluation's retrieval depth)."""
        declared = dict(self.bundle.config.canvas(canvas).sources) if canvas in self.bundle.config.canvas_names else {}
        declared["embedding"] = max(declared.get("embedding", 0), depth)
        return declared

    def _union(
        self, requests: RequestSet, start: int, scores: torch.Tensor, depth: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(candidates (R, C) catalogue positions, -1 padding; source scores (R, C, S)) of one batch: the
        embedding source's top ``depth`` first, then what the other sources add, never an excluded entity."""
        r_count = scores.shape[0]
        depths = self.source_depths(requests.canvas, depth)
        exclude = requests.exclude[start : start + r_count]
        emb = top_k_excluding(scores, exclude, depths["embedding"])  # (R, C_e)
        proposals = None
        if any(s in depths for s in SOURCE_NAMES[1:]):
            records = requests.contexts.slice(start, r_count).to_dicts()
            proposals = self.sources.proposals([requests.canvas] * r_count, records, self.position_of)
        orders = []
        for r, top in enumerate(emb.cpu().numpy()):
            top = top[~np.isin(top, exclude[r])]  # a depth beyond what is left reaches the excluded
            extra = proposals.positions(r) if proposals is not None else top[:0]
            extra = extra[~np.isin(extra, top) & ~np.isin(extra, exclude[r])]
            orders.append(np.concatenate([top, extra]))
        cand_np = np.full((r_count, max(len(o) for o in orders)), -1, dtype=np.int64)
        for r, order in enumerate(orders):
            cand_np[r, : len(order)] = order
        cand = torch.from_numpy(cand_np).to(scores.device)
        rows = torch.arange(r_count, device=scores.device)[:, None].expand_as(cand)
        feats = torch.zeros(*cand.shape, len(SOURCE_NAMES), device=scores.device)
        if proposals is not None:
            feats = proposals.to(scores.device).lookup(rows.reshape(-1), cand.reshape(-1)).view(*cand.shape, -1)
        feats[..., 0] = torch.gather(scores, 1, cand.clamp(min=0)).masked_fill(cand < 0, 0.0)
        return cand, feats

    @torch.no_grad()
    def candidates(self, requests: RequestSet, depth: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """Per batch of requests: (candidates (R, C) catalogue positions, embedding source's first, -1 for
        padding), their objective logits (R, C, O), source scores (R, C, S) in ``SOURCE_NAMES`` order, the
        canvas of each (R,))."""
        model = self.bundle.model.eval()
        device = self.item_embs.device
        for start in range(0, len(requests), self.batch_size):
            frame = requests.contexts.slice(start, self.batch_size)
            ctx = context_tensors(self.bundle.featurizer.transform_context(frame), device)
            cf, ce = model.encode_context(ctx)  # (R, F_c), (R, D)
            scores = ce @ self.item_embs.T
            if not self.rank:
                cand = top_k_excluding(scores, requests.exclude[start : start + len(frame)], depth)
                feats = torch.zeros(*cand.shape, len(SOURCE_NAMES), device=device)
                feats[..., 0] = torch.gather(scores, 1, cand)
                yield cand, scores.new_zeros(*cand.shape, 0), feats, ctx["task_type"]
                continue
            cand, feats = self._union(requests, start, scores, depth)
            r, c = cand.shape
            flat = cand.clamp(min=0).reshape(-1)
            task = ctx["task_type"].repeat_interleave(c)
            logits = model.rank(
                cf.repeat_interleave(c, dim=0),
                ce.repeat_interleave(c, dim=0),
                self.item_feats[flat],
                self.item_embs[flat],
                task,
                feats.reshape(r * c, -1),
            )
            yield cand, logits.view(r, c, -1), feats, ctx["task_type"]

    def candidate_recall(self, requests: RequestSet) -> dict[str, float]:
        """Share of each request's relevant entities among the candidates of each source and of their
        union (before ranking), averaged over requests: what ranking can at best recover."""
        depths = self.source_depths(requests.canvas, self.depth)
        found: dict[str, list[float]] = {name: [] for name in [*depths, "union"]}
        r = 0
        for cand, _, feats, _ in self.candidates(requests, self.depth):
            for row, row_feats in zip(cand.tolist(), feats, strict=True):
                relevant = set(requests.relevant[r].tolist())
                r += 1
                members = {"union": {p for p in row if p >= 0}, "embedding": set(row[: depths["embedding"]])}
                for name in depths:
                    if name != "embedding":
                        column = row_feats[:, SOURCE_NAMES.index(name)] > 0
                        members[name] = {p for p, hit in zip(row, column.tolist(), strict=True) if hit and p >= 0}
                for name, got in members.items():
                    found[name].append(len(relevant & got) / max(1, len(relevant)))
        return {name: float(np.mean(v)) if v else float("nan") for name, v in found.items()}

    def recommend(self, requests: RequestSet, k: int) -> np.ndarray:
        model = self.bundle.model
        out = []
        for cand, logits, feats, task in self.candidates(requests, max(k, self.depth) if self.rank else k):
            if not self.rank:
                out.append(cand[:, :k].cpu().numpy())
                continue
            r, c = cand.shape
            rows = task.repeat_interleave(c)
            scores = model.blend_scores(logits.reshape(r * c, -1), rows, feats.reshape(r * c, -1)).view(r, c)
            scores = scores.masked_fill(cand < 0, float("-inf"))
            order = torch.argsort(scores, dim=1, descending=True)[:, :k]
            out.append(torch.gather(cand, 1, order).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


class PopularityRecommender:
    """Most responded-to entities in training (per canvas when given that canvas's rows)."""

    def __init__(self, train_positives: pl.DataFrame, catalogue: pl.DataFrame) -> None:
        counts = np.zeros(catalogue.height)
        pos = entity_positions(catalogue, train_positives["entity_id"])
        np.add.at(counts, pos[pos >= 0], 1.0)
        self.scores = torch.as_tensor(counts)
        self.catalogue_size = catalogue.height

    def recommend(self, requests: RequestSet, k: int) -> np.ndarray:
        scores = self.scores[None, :].expand(len(requests), -1)
        return top_k_excluding(scores, requests.exclude, k).numpy()


class CategoryPopularityRecommender:
    """Browse: the most responded-to entities (in training, all canvases) of the request's category, then
    the rest by popularity."""

    def __init__(self, train_positives: pl.DataFrame, catalogue: pl.DataFrame, *, category_field: str = "category"):
        self.popularity = PopularityRecommender(train_positives, catalogue).scores
        self.catalogue_size = catalogue.height
        self.category_field = category_field
        members: dict[str, list[int]] = defaultdict(list)
        for pos, cats in enumerate(catalogue["categories"].fill_null("").to_list()):
            for c in cats.split("|"):
                if c:
                    members[c].append(pos)
        self.members = {c: torch.as_tensor(p) for c, p in members.items()}

    def recommend(self, requests: RequestSet, k: int) -> np.ndarray:
        scores = self.popularity[None, :].repeat(len(requests), 1) * 1e-6
        for r, category in enumerate(requests.contexts[self.category_field].cast(pl.String).to_list()):
            rows = self.members.get(category or "")
            if rows is not None:  # in the category first (+1), by popularity within it
                scores[r, rows] += self.popularity[rows] + 1.0
        return top_k_excluding(scores, requests.exclude, k).numpy()


class CooccurrenceRecommender:
    """Related items: entities consumed right after the source entity by the same user (item-to-item
    transitions in training), backed off to popularity."""

    def __init__(
        self,
        train_positives: pl.DataFrame,
        catalogue: pl.DataFrame,
        *,
        source_field: str = "source_item_id",
        window: int = 3,
    ) -> None:
        self.popularity = PopularityRecommender(train_positives, catalogue).scores
        self.catalogue = catalogue
        self.catalogue_size = catalogue.height
        self.source_field = source_field
        rows = (
            train_positives.filter(pl.col("user_id").is_not_null())
            .select("user_id", "ts", "entity_id")
            .unique()
            .sort(["user_id", "ts", "entity_id"])
        )
        rows = rows.with_columns(pl.Series("pos", entity_positions(catalogue, rows["entity_id"])))
        seqs = rows.group_by("user_id", maintain_order=True).agg(pl.col("pos"))
        self.next: dict[int, Counter[int]] = defaultdict(Counter)
        for _, seq in seqs.iter_rows():
            for i, a in enumerate(seq):
                for b in seq[i + 1 : i + 1 + window]:
                    self.next[a][b] += 1
                    self.next[b][a] += 1

    def recommend(self, requests: RequestSet, k: int) -> np.ndarray:
        sources = entity_positions(self.catalogue, requests.contexts[self.source_field].cast(pl.String))
        scores = self.popularity[None, :].repeat(len(requests), 1) * 1e-6
        for r, s in enumerate(sources):
            for b, n in self.next.get(int(s), {}).items():
                scores[r, b] += n
        return top_k_excluding(scores, requests.exclude, k).numpy()


class BM25Recommender:
    """Search: Okapi BM25 of the query over each entity's title and categories (rank-bm25)."""

    def __init__(self, catalogue: pl.DataFrame, train_positives: pl.DataFrame, *, query_field: str = "query") -> None:
        from rank_bm25 import BM25Okapi

        from monorec.data.text_hashing import tokenize

        docs = [
            [t for t in tokenize(f"{title} {cats.replace('|', ' ')}") if len(t) > 0]
            for title, cats in catalogue.select("title", "categories").iter_rows()
        ]
        self.bm25 = BM25Okapi(docs)
        self.tokenize = tokenize
        self.query_field = query_field
        self.catalogue_size = catalogue.height
        self.popularity = PopularityRecommender(train_positives, catalogue).scores

    def recommend(self, requests: RequestSet, k: int) -> np.ndarray:
        rows = []
        for q in requests.contexts[self.query_field].to_list():
            s = self.bm25.get_scores(self.tokenize(q or "")) if q else np.zeros(len(self.popularity))
            rows.append(torch.as_tensor(s) + 1e-6 * self.popularity)
        return top_k_excluding(torch.stack(rows), requests.exclude, k).numpy()
