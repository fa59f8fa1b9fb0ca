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
from monorec.evaluation.requests import RequestSet, entity_positions

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
    """Retrieval over the full catalogue (dot product), then the canvas's blended ranker on the top
    ``depth`` candidates. ``rank=False`` stops after retrieval."""

    def __init__(
        self,
        bundle: ModelBundle,
        catalogue: pl.DataFrame,
        *,
        depth: int = 100,
        rank: bool = True,
        batch_size: int = 256,
    ) -> None:
        self.bundle, self.depth, self.rank, self.batch_size = bundle, depth, rank, batch_size
        self.item_feats, self.item_embs = bundle.item_embeddings(catalogue)
        self.catalogue_size = catalogue.height

    def retrieval_only(self) -> ModelRecommender:
        """The same recommender stopping after retrieval, sharing the encoded catalogue."""
        twin = copy.copy(self)
        twin.rank = False
        return twin

    @torch.no_grad()
    def candidates(self, requests: RequestSet, depth: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """Per batch of requests: (candidates (R, C) catalogue positions in retrieval order, their objective
        logits (R, C, O), retrieval scores (R, C), the canvas of each (R,))."""
        model = self.bundle.model.eval()
        device = self.item_embs.device
        for start in range(0, len(requests), self.batch_size):
            frame = requests.contexts.slice(start, self.batch_size)
            ctx = context_tensors(self.bundle.featurizer.transform_context(frame), device)
            cf, ce = model.encode_context(ctx)  # (R, F_c), (R, D)
            scores = ce @ self.item_embs.T
            cand = top_k_excluding(scores, requests.exclude[start : start + len(frame)], depth)  # (R, C)
            r, c = cand.shape
            if not self.rank:
                yield cand, scores.new_zeros(r, c, 0), torch.gather(scores, 1, cand), ctx["task_type"]
                continue
            flat = cand.reshape(-1)
            task = ctx["task_type"].repeat_interleave(c)
            logits = model.rank(
                cf.repeat_interleave(c, dim=0),
                ce.repeat_interleave(c, dim=0),
                self.item_feats[flat],
                self.item_embs[flat],
                task,
            )
            yield cand, logits.view(r, c, -1), torch.gather(scores, 1, cand), ctx["task_type"]

    def recommend(self, requests: RequestSet, k: int) -> np.ndarray:
        model = self.bundle.model
        out = []
        for cand, logits, retrieval, task in self.candidates(requests, max(k, self.depth) if self.rank else k):
            if not self.rank:
                out.append(cand[:, :k].cpu().numpy())
                continue
            r, c = cand.shape
            rows = task.repeat_interleave(c)
            scores = model.blend_scores(logits.reshape(r * c, -1), rows, retrieval.reshape(-1)).view(r, c)
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

        from monorec.data.features import tokenize

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
