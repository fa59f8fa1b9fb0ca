"""Late fusion of the candidate sources' scores into each canvas's ranking score, chosen on validation.

The ranking score of a candidate is the canvas's blend of the ranker's objectives plus, for each source,
``source_weights[canvas, source]`` times that source's score of the candidate (the embedding source's
score is the retrieval score context . entity, a cosine; BM25 for lexical; see ``monorec.retrieval``). How
much to trust each source's order beside the ranker's depends on the data: where the ranker learned little
beyond what a source knows (few rows, a sharp source), that source should weigh more. The weights are
chosen per canvas on the VALIDATION requests after training by coordinate ascent over a fixed grid (each
source's weight in turn, the others held, twice round), by NDCG@k; the test split is never read. Weight 0
is the ranker alone; the largest weight is, in effect, that source's order alone.
"""

from __future__ import annotations

import numpy as np
import torch

from monorec.bundle import ModelBundle
from monorec.config import SOURCE_NAMES
from monorec.evaluation.metrics import ndcg_at_k
from monorec.evaluation.recommenders import ModelRecommender
from monorec.evaluation.requests import RequestSet

__all__ = ["SOURCE_WEIGHTS", "tune_source_weights"]

SOURCE_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 1000.0)
ROUNDS = 2


@torch.no_grad()
def tune_source_weights(
    bundle: ModelBundle,
    recommender: ModelRecommender,
    requests: dict[str, RequestSet],
    k: int,
    grid: tuple[float, ...] = SOURCE_WEIGHTS,
) -> dict[str, dict[str, float]]:
    """Chooses each canvas's source weights on validation requests and writes them into the model (and its
    constructor arguments, so a saved bundle keeps them).

    Returns:
        canvas -> {source: chosen weight, ..., "ndcg@k": validation NDCG with them, "ndcg@k_ranker": with
        every weight 0}; canvases without validation requests keep their weights and are left out.
    """
    model = bundle.model
    names = bundle.config.canvas_names
    chosen: dict[str, dict[str, float]] = {}
    for canvas, reqs in requests.items():
        if len(reqs) == 0:
            continue
        t = names.index(canvas)
        blend, sources, cands = [], [], []
        width = 0
        for cand, logits, feats, _ in recommender.candidates(reqs, max(k, recommender.depth)):
            r, c = cand.shape
            task = torch.full((r * c,), t, dtype=torch.long, device=cand.device)
            blend.append(model.blend_scores(logits.reshape(r * c, -1), task).view(r, c))
            sources.append(feats)
            cands.append(cand)
            width = max(width, c)
        b = torch.cat([_pad(x, width, float("-inf")) for x in blend])  # (R, C); padding never ranks
        s = torch.cat([_pad(x, width, 0.0) for x in sources])  # (R, C, S)
        cand = torch.cat([_pad(x, width, -1) for x in cands])
        active = [j for j, name in enumerate(SOURCE_NAMES) if j == 0 or name in recommender.source_depths(canvas, 1)]

        weights = torch.zeros(len(SOURCE_NAMES), device=s.device)  # where the scores are (a GPU in training)
        ranker_alone = best = _ndcg(b, s, cand, weights, reqs, k)
        for _ in range(ROUNDS):
            for j in active:
                for w in grid:  # ties keep the earlier (smaller) weight: the ranker's own order
                    trial = weights.clone()
                    trial[j] = w
                    score = _ndcg(b, s, cand, trial, reqs, k)
                    if score > best:
                        best, weights = score, trial
        model.source_weights[t] = weights
        chosen[canvas] = {
            **{SOURCE_NAMES[j]: float(weights[j]) for j in active},
            f"ndcg@{k}": best,
            f"ndcg@{k}_ranker": ranker_alone,
        }
    bundle.model_kwargs.pop("retrieval_weight", None)
    bundle.model_kwargs["source_weights"] = [[float(x) for x in row] for row in model.source_weights.tolist()]
    return chosen


def _ndcg(
    blend: torch.Tensor, sources: torch.Tensor, cand: torch.Tensor, weights: torch.Tensor, reqs: RequestSet, k: int
) -> float:
    """Mean NDCG@k of ranking (R, C) candidates by blend + sources (R, C, S) . weights (S,)."""
    order = torch.argsort(blend + (sources * weights).sum(dim=2), dim=1, descending=True)[:, :k]
    topk = torch.gather(cand, 1, order).cpu().numpy()
    return float(np.mean(ndcg_at_k(topk, reqs.relevant, k)))


def _pad(x: torch.Tensor, width: int, value: float) -> torch.Tensor:
    """(R, C, ...) -> (R, width, ...) filled with ``value``."""
    if x.shape[1] == width:
        return x
    shape = (x.shape[0], width - x.shape[1], *x.shape[2:])
    return torch.cat([x, torch.full(shape, value, dtype=x.dtype, device=x.device)], dim=1)
