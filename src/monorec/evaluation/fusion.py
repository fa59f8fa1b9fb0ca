"""Late fusion of the retrieval score into each canvas's ranking score, chosen on validation.

The ranking score of a candidate is the canvas's blend of the ranker's objectives plus
``retrieval_weight[canvas]`` times its retrieval score (context . entity, a cosine). How much to trust the
retrieval's order beside the ranker's depends on the data: where the ranker learned little beyond what
retrieval knows (few rows, a sharp retrieval), the retrieval order should weigh more. The weight is chosen
per canvas on the VALIDATION requests after training, from a fixed grid, by NDCG@k; the test split is
never read. Weight 0 is the ranker alone; the largest weight is, in effect, the retrieval order alone.
"""

from __future__ import annotations

import numpy as np
import torch

from monorec.bundle import ModelBundle
from monorec.evaluation.metrics import ndcg_at_k
from monorec.evaluation.recommenders import ModelRecommender
from monorec.evaluation.requests import RequestSet

__all__ = ["RETRIEVAL_WEIGHTS", "tune_retrieval_weights"]

RETRIEVAL_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 1000.0)


@torch.no_grad()
def tune_retrieval_weights(
    bundle: ModelBundle,
    recommender: ModelRecommender,
    requests: dict[str, RequestSet],
    k: int,
    grid: tuple[float, ...] = RETRIEVAL_WEIGHTS,
) -> dict[str, dict[str, float]]:
    """Chooses each canvas's retrieval weight on validation requests and writes it into the model (and its
    constructor arguments, so a saved bundle keeps it).

    Returns:
        canvas -> {"weight": chosen, "ndcg@k": its validation NDCG, "ndcg@k_ranker": weight 0's}; canvases
        without validation requests keep their weight and are left out.
    """
    model = bundle.model
    names = bundle.config.canvas_names
    chosen: dict[str, dict[str, float]] = {}
    for canvas, reqs in requests.items():
        if len(reqs) == 0:
            continue
        t = names.index(canvas)
        blend, retrieval, cands = [], [], []
        for cand, logits, ret, _ in recommender.candidates(reqs, max(k, recommender.depth)):
            r, c = cand.shape
            task = torch.full((r * c,), t, dtype=torch.long, device=cand.device)
            blend.append(model.blend_scores(logits.reshape(r * c, -1), task).view(r, c))
            retrieval.append(ret)
            cands.append(cand)
        b, s, cand = torch.cat(blend), torch.cat(retrieval), torch.cat(cands)
        scores = {}
        for w in grid:
            order = torch.argsort(b + w * s, dim=1, descending=True)[:, :k]
            topk = torch.gather(cand, 1, order).cpu().numpy()
            scores[w] = float(np.mean(ndcg_at_k(topk, reqs.relevant, k)))
        best = max(grid, key=lambda w: (scores[w], -w))  # ties: the smaller weight (the ranker's own order)
        model.retrieval_weight[t] = best
        chosen[canvas] = {"weight": best, f"ndcg@{k}": scores[best], f"ndcg@{k}_ranker": scores[0.0]}
    bundle.model_kwargs["retrieval_weight"] = [float(x) for x in model.retrieval_weight.tolist()]
    return chosen
