"""Late fusion of the candidate sources' scores into each canvas's ranking score, chosen on validation.

The ranking score of a candidate is the canvas's blend of the ranker's objectives plus, for each source,
``source_weights[canvas, source]`` times that source's score of the candidate (the embedding source's
score is the retrieval score context . entity, a cosine; BM25 for lexical; see ``monorec.retrieval``). How
much to trust each source's order beside the ranker's depends on the data: where the ranker learned little
beyond what a source knows (few rows, a sharp source), that source should weigh more. The weights are
chosen per canvas on the VALIDATION requests after training (a :class:`FusionRule`): by default by
coordinate ascent over a fixed grid (each source's weight in turn, the others held, twice round), by
NDCG@k; or by fitting the weights to the likelihood of the relevant candidates (``method = "softmax"``).
The test split is never read. Weight 0 is the ranker alone; the largest weight is, in effect, that
source's order alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from monorec.bundle import ModelBundle
from monorec.config import SOURCE_NAMES
from monorec.config_specs import TrainSpec
from monorec.evaluation.metrics import ndcg_at_k
from monorec.evaluation.recommenders import ModelRecommender
from monorec.evaluation.requests import RequestSet

__all__ = [
    "SOURCE_WEIGHTS",
    "FusionInputs",
    "FusionRule",
    "choose_weights",
    "fused_ndcg",
    "fusion_inputs",
    "simple_orders",
    "tune_source_weights",
    "two_fold_splits",
]

SOURCE_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 1000.0)
ROUNDS = 2
SOFTMAX_STEPS = 200  # Adam steps of the softmax fit (a few parameters; it converges in far fewer)
EITHER_SPLITS = 3  # seeded 2-fold splits on which method "either" compares the grid and the softmax fit
BAGS = 25  # seeded bootstrap resamples whose ascents method "bagged" takes the median of (odd: a grid value)


@dataclass(frozen=True)
class FusionRule:
    """How :func:`choose_weights` chooses (``train.fusion_*`` in the config; defaults: the grid ascent by
    NDCG@k, every move kept).

    - ``method``: ``"grid"``, the coordinate ascent by NDCG; ``"softmax"``, the weights that maximise the
      likelihood of each request's relevant candidates under a softmax over its candidates (every
      candidate's score counts, not only whether a relevant one reaches the top k; see
      :func:`fit_softmax`); ``"either"``, per canvas the one of the two whose weights, fitted on one half
      of the requests, score the higher NDCG@k on the other half (``EITHER_SPLITS`` seeded splits, both
      halves each; a tie keeps the grid), then fitted on all of them; ``"bagged"``, per source the median
      of the weights the grid ascent chooses on ``BAGS`` seeded bootstrap resamples of the requests (a
      choice that a few requests swing is voted down by the resamples without them).
    - ``margin`` (grid): a move must gain more than this many standard errors of the per-request gains.
    - ``cv_repeats``: the fitted blend is checked against the simple orders by this many 2-fold splits.
    - ``select_k`` (grid): chosen by NDCG at this depth (0: at k).
    """

    method: Literal["grid", "softmax", "either", "bagged"] = "grid"
    margin: float = 0.0
    cv_repeats: int = 0
    select_k: int = 0

    @classmethod
    def of(cls, train: TrainSpec) -> FusionRule:
        """The rule a config's ``train`` section asks for."""
        return cls(train.fusion_method, train.fusion_margin, train.fusion_cv_repeats, train.fusion_k)


@torch.no_grad()
def tune_source_weights(
    bundle: ModelBundle,
    recommender: ModelRecommender,
    requests: dict[str, RequestSet],
    k: int,
    rule: FusionRule = FusionRule(),
    grid: tuple[float, ...] = SOURCE_WEIGHTS,
) -> dict[str, dict[str, float]]:
    """Chooses each canvas's source weights on validation requests by ``rule`` and writes them into the
    model (and its constructor arguments, so a saved bundle keeps them).

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
        inputs = fusion_inputs(bundle, recommender, canvas, reqs, max(k, rule.select_k))
        weights, best, ranker_alone = choose_weights(inputs, reqs.relevant, k, rule, grid)
        model.source_weights[names.index(canvas)] = weights
        chosen[canvas] = {
            **{SOURCE_NAMES[j]: float(weights[j]) for j in inputs.active},
            f"ndcg@{k}": best,
            f"ndcg@{k}_ranker": ranker_alone,
        }
    bundle.model_kwargs.pop("retrieval_weight", None)
    bundle.model_kwargs["source_weights"] = [[float(x) for x in row] for row in model.source_weights.tolist()]
    return chosen


@dataclass(frozen=True)
class FusionInputs:
    """One canvas's requests ready for fusion: R requests, C candidates each (padded), S sources."""

    blend: torch.Tensor  # (R, C) the ranker's blended score, -inf on padding
    sources: torch.Tensor  # (R, C, S) each source's score of each candidate (0: not proposed)
    candidates: torch.Tensor  # (R, C) catalogue positions, -1 on padding
    active: list[int]  # the source columns this canvas uses (0, the embedding, always)

    def take(self, rows: np.ndarray) -> FusionInputs:
        """The same for a subset of the requests (row indices)."""
        idx = torch.as_tensor(rows, device=self.blend.device)
        return FusionInputs(self.blend[idx], self.sources[idx], self.candidates[idx], self.active)


@torch.no_grad()
def fusion_inputs(
    bundle: ModelBundle, recommender: ModelRecommender, canvas: str, reqs: RequestSet, k: int
) -> FusionInputs:
    """Retrieves and ranks ``reqs``'s candidates once, so that any number of weightings can be scored."""
    model = bundle.model
    t = bundle.config.canvas_names.index(canvas)
    blend, sources, cands = [], [], []
    width = 0
    for cand, logits, feats, _ in recommender.candidates(reqs, max(k, recommender.depth)):
        r, c = cand.shape
        task = torch.full((r * c,), t, dtype=torch.long, device=cand.device)
        blend.append(model.blend_scores(logits.reshape(r * c, -1), task).view(r, c))
        sources.append(feats)
        cands.append(cand)
        width = max(width, c)
    active = [j for j, name in enumerate(SOURCE_NAMES) if j == 0 or name in recommender.source_depths(canvas, 1)]
    return FusionInputs(
        torch.cat([_pad(x, width, float("-inf")) for x in blend]),  # padding never ranks
        torch.cat([_pad(x, width, 0.0) for x in sources]),
        torch.cat([_pad(x, width, -1) for x in cands]),
        active,
    )


def choose_weights(
    inputs: FusionInputs,
    relevant: list[np.ndarray],
    k: int,
    rule: FusionRule = FusionRule(),
    grid: tuple[float, ...] = SOURCE_WEIGHTS,
) -> tuple[torch.Tensor, float, float]:
    """The weights ``rule`` chooses. By ``"grid"``: coordinate ascent over ``grid`` from every weight 0 (the
    ranker alone): each source's weight in turn, the others held, ``ROUNDS`` times round; per source the
    best weight is taken when it gains on the current weights. By ``"softmax"``: :func:`fit_softmax`.

    ``margin`` > 0 asks more of a gain: its mean over the requests must exceed ``margin`` standard errors of
    the per-request gains. With a few hundred validation requests the best of ~60 trials beats the current
    weights by chance, and the chosen blend then loses on later requests what it won on validation (the
    synthetic worlds' browse: docs/benchmarks.md); the margin keeps a move only when the requests agree on
    it, which with thousands of requests costs next to nothing.

    ``cv_repeats`` > 0 checks the fitted blend against the simple orders (the ranker alone, each source's
    order alone): the ascent's held-out NDCG is estimated by ``cv_repeats`` seeded 2-fold splits of the
    requests (fitted on one half, scored on the other), and a simple order that scores higher on all the
    requests than that estimate is kept instead. A simple order is not fitted, so its validation score is
    (nearly) what later requests will see; the blend's is not, and the split tells how much of it is fit.

    ``select_k`` > ``k`` chooses by NDCG@select_k (the ascent and the check; 0: by NDCG@k): a deeper cut
    reads where each request's relevant entities sit further down the candidates, not only whether they
    reach the top k, so a comparison of two blends rests on more of each request than the one or two hits
    in its top k; with ~150 requests NDCG@10 separates blends by chance (the synthetic browse).

    Returns:
        (S,) weights, validation NDCG@k with them, NDCG@k of the ranker alone.
    """
    sk = max(k, rule.select_k)
    weights = _fit(inputs, relevant, sk, rule, grid)
    if rule.cv_repeats > 0 and len(relevant) >= 4:
        held_out = _held_out(inputs, relevant, sk, rule, grid, rule.cv_repeats)
        for order in simple_orders(inputs, grid).values():
            value = float(np.mean(fused_ndcg(inputs, order, relevant, sk)))
            if value > held_out:
                held_out, weights = value, order
    best = float(np.mean(fused_ndcg(inputs, weights, relevant, k)))
    ranker_alone = float(np.mean(fused_ndcg(inputs, torch.zeros_like(weights), relevant, k)))
    return weights, best, ranker_alone


def simple_orders(inputs: FusionInputs, grid: tuple[float, ...] = SOURCE_WEIGHTS) -> dict[str, torch.Tensor]:
    """The weightings that fit nothing: ``"ranker"`` (every weight 0) and ``"alone:SOURCE"`` (that source's
    order, the ranker breaking its ties) for each source the canvas uses -> (S,) weights each."""
    orders = {"ranker": torch.zeros(len(SOURCE_NAMES), device=inputs.sources.device)}
    for j in inputs.active:
        alone = torch.zeros(len(SOURCE_NAMES), device=inputs.sources.device)
        alone[j] = max(grid, default=1.0)
        orders[f"alone:{SOURCE_NAMES[j]}"] = alone
    return orders


def _fit(
    inputs: FusionInputs, relevant: list[np.ndarray], k: int, rule: FusionRule, grid: tuple[float, ...]
) -> torch.Tensor:
    """(S,) weights by the rule's method (no check)."""
    if rule.method == "either":
        both = {m: dataclasses.replace(rule, method=m) for m in ("grid", "softmax")}
        if len(relevant) < 4:
            return _fit(inputs, relevant, k, both["grid"], grid)
        held_out = {m: _held_out(inputs, relevant, k, r, grid, EITHER_SPLITS) for m, r in both.items()}
        return _fit(inputs, relevant, k, both["softmax" if held_out["softmax"] > held_out["grid"] else "grid"], grid)
    if rule.method == "softmax":
        return fit_softmax(inputs, relevant, max_weight=max(grid, default=1.0))
    if rule.method == "bagged" and len(relevant) >= 2:
        chosen = []
        for b in range(BAGS):
            rows = np.random.default_rng(b).integers(0, len(relevant), len(relevant))
            chosen.append(_ascent(inputs.take(rows), [relevant[i] for i in rows], k, grid, rule.margin))
        return torch.stack(chosen).median(dim=0).values  # BAGS is odd: the middle of the chosen grid values
    return _ascent(inputs, relevant, k, grid, rule.margin)


def fit_softmax(
    inputs: FusionInputs, relevant: list[np.ndarray], max_weight: float = 1000.0, steps: int = SOFTMAX_STEPS
) -> torch.Tensor:
    """The source weights that maximise the mean log-probability of each request's relevant candidates
    under a softmax over its candidates' scores ``a * blend + sum_s b_s * source_s`` (``a``, ``b_s`` > 0,
    fitted by Adam from ``a = 1``, ``b = softplus(0)``); the ranking weights are ``b_s / a`` (the order
    depends on their ratio alone), capped at ``max_weight``.

    Why: NDCG@k of ~150 requests moves only when a relevant candidate crosses into the top k, so a grid
    search over blends picks among near-ties by chance (the synthetic worlds' browse,
    docs/benchmarks.md). The likelihood reads every relevant candidate's position among all the
    candidates, smoothly, so a few parameters are fitted on all that the requests tell. Requests whose
    relevant entities were not retrieved tell nothing here and are left out.

    Returns:
        (S,) weights, 0 for the sources the canvas does not use.
    """
    device = inputs.sources.device
    weights = torch.zeros(len(SOURCE_NAMES), device=device)
    hit = torch.zeros(inputs.candidates.shape, dtype=torch.bool, device=device)
    for r, rel in enumerate(relevant):
        if len(rel):
            hit[r] = torch.isin(inputs.candidates[r], torch.as_tensor(rel, device=device)) & (inputs.candidates[r] >= 0)
    keep = hit.any(dim=1)
    if not bool(keep.any()) or len(inputs.active) == 0:
        return weights
    pad = ~torch.isfinite(inputs.blend[keep])
    blend = inputs.blend[keep].masked_fill(pad, 0.0)
    active = torch.as_tensor(inputs.active, device=device)
    sources = inputs.sources[keep][:, :, active]
    hits = hit[keep]
    # per-column scale so that one learning rate suits BM25 (tens), cosines and ranks (about 1) alike
    peak = sources.abs().amax(dim=(0, 1))
    scale = peak.clamp(min=1e-6)
    log_a = torch.zeros((), device=device, requires_grad=True)
    raw_b = torch.zeros(len(inputs.active), device=device, requires_grad=True)
    opt = torch.optim.Adam([log_a, raw_b], lr=0.05)
    with torch.enable_grad():
        for _ in range(steps):
            score = log_a.exp() * blend + (sources / scale * torch.nn.functional.softplus(raw_b)).sum(dim=2)
            score = score.masked_fill(pad, float("-inf"))
            loss = (score.logsumexp(dim=1) - score.masked_fill(~hits, float("-inf")).logsumexp(dim=1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    ratio = torch.nn.functional.softplus(raw_b.detach()) / scale / log_a.detach().exp()
    said = peak > 0  # a source that scored no candidate here learned nothing
    weights[active] = torch.where(said, ratio.clamp(max=max_weight), torch.zeros_like(ratio))
    return weights


def _ascent(
    inputs: FusionInputs, relevant: list[np.ndarray], k: int, grid: tuple[float, ...], margin: float
) -> torch.Tensor:
    """The coordinate ascent of :func:`choose_weights` -> (S,) weights."""
    weights = torch.zeros(len(SOURCE_NAMES), device=inputs.sources.device)  # where the scores are (a GPU)
    current = fused_ndcg(inputs, weights, relevant, k)
    for _ in range(ROUNDS):
        for j in inputs.active:
            best, best_trial, best_values = float(np.mean(current)), None, current
            for w in grid:  # ties keep the earlier (smaller) weight: the ranker's own order
                trial = weights.clone()
                trial[j] = w
                values = fused_ndcg(inputs, trial, relevant, k)
                if float(np.mean(values)) > best:
                    best, best_trial, best_values = float(np.mean(values)), trial, values
            if best_trial is not None and _clears(best_values - current, margin):
                weights, current = best_trial, best_values
    return weights


def _held_out(
    inputs: FusionInputs,
    relevant: list[np.ndarray],
    k: int,
    rule: FusionRule,
    grid: tuple[float, ...],
    repeats: int,
) -> float:
    """Mean NDCG@k of the rule's fit on one half of the requests scored on the other, over ``repeats``
    seeded splits (both halves each)."""
    scores = []
    for fit, score in two_fold_splits(len(relevant), repeats):
        weights = _fit(inputs.take(fit), [relevant[i] for i in fit], k, rule, grid)
        scores.append(fused_ndcg(inputs.take(score), weights, [relevant[i] for i in score], k))
    return float(np.mean(np.concatenate(scores)))


def two_fold_splits(n: int, repeats: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(fit, score) row indices of ``repeats`` seeded halvings of ``n`` requests, each half fitting once."""
    for seed in range(repeats):
        order = np.random.default_rng(seed).permutation(n)
        halves = (order[: n // 2], order[n // 2 :])
        yield halves
        yield halves[1], halves[0]


def _clears(gain: np.ndarray, margin: float) -> bool:
    """Whether a (R,) per-request gain's mean exceeds ``margin`` standard errors (any positive mean at 0)."""
    if margin <= 0 or len(gain) < 2:
        return True
    return float(gain.mean()) > margin * float(gain.std(ddof=1)) / np.sqrt(len(gain))


def fused_ndcg(inputs: FusionInputs, weights: torch.Tensor, relevant: list[np.ndarray], k: int) -> np.ndarray:
    """(R,) NDCG@k of ranking the candidates by blend + sources . weights."""
    score = inputs.blend + (inputs.sources * weights).sum(dim=2)
    order = torch.argsort(score, dim=1, descending=True)[:, :k]
    topk = torch.gather(inputs.candidates, 1, order).cpu().numpy()
    return np.asarray(ndcg_at_k(topk, relevant, k), dtype=np.float64)


def _pad(x: torch.Tensor, width: int, value: float) -> torch.Tensor:
    """(R, C, ...) -> (R, width, ...) filled with ``value``."""
    if x.shape[1] == width:
        return x
    shape = (x.shape[0], width - x.shape[1], *x.shape[2:])
    return torch.cat([x, torch.full(shape, value, dtype=x.dtype, device=x.device)], dim=1)
