"""The serving halves of the model as exportable graphs, and their export to ONNX (issue 13: the model
path off the GIL). A request needs two forwards: the context tower (one row per request) and the ranker
(one row per (request, candidate) pair). Each is wrapped here with a forward that has no data-dependent
branch, so ``torch.export`` keeps the batch dimension symbolic, and written as an ONNX file that ONNX
Runtime executes without the GIL (:mod:`monorec.models.onnx_model`). The PyTorch modules stay the
reference: a version's export is checked against them on a fixed batch (``tests/test_onnx_runtime.py``).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from monorec.models.model import MonorecModel

__all__ = [
    "CONTEXT_FILE",
    "RANKER_FILE",
    "RANKER_INPUTS",
    "RANKER_OUTPUTS",
    "ContextGraph",
    "RankerGraph",
    "export_onnx",
]

CONTEXT_FILE = "context.onnx"
RANKER_FILE = "ranker.onnx"
RANKER_INPUTS = ("ctx_feats", "ctx_emb", "owner", "item_feats", "item_emb", "task", "sources")
RANKER_OUTPUTS = ("logits", "scores")
OPSET = 18
MAX_ROWS = 1 << 24  # the symbolic batch's upper bound (torch.export wants one)


class ContextGraph(nn.Module):
    """The context tower: the featurizer's arrays (name -> (B, ...)) -> (features (B, F_c), embedding (B, D))."""

    def __init__(self, model: MonorecModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ctx: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_context(ctx)


class _Requests:
    """The requests of one ranker call, shared by the bottom's first layers while it runs: features (R, F_c)
    and each pair's request (N,)."""

    feats: torch.Tensor
    owner: torch.Tensor


class _ContextShared(nn.Module):
    """A linear layer that reads the ranker's input (context features | pair inputs), computed with the
    context's share once per request: ``feats W_c^T`` gathered by pair, plus ``pairs W_p^T + b``. The same
    values as the layer on the concatenated rows; the context features are over half of the ranker's input
    (e.g. 320 of 545 columns), and a request's 200 candidates all carry the same ones."""

    def __init__(self, layer: nn.Linear, context_dim: int, requests: _Requests) -> None:
        super().__init__()
        weight = layer.weight.detach()
        self.context_weight = nn.Parameter(weight[:, :context_dim].clone(), requires_grad=False)
        self.pair_weight = nn.Parameter(weight[:, context_dim:].clone(), requires_grad=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        self.requests = requests

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        shared = F.linear(self.requests.feats, self.context_weight).index_select(0, self.requests.owner)
        return shared + F.linear(pairs, self.pair_weight, self.bias)


class RankerGraph(nn.Module):
    """The ranker on (request, candidate) pairs: the requests' context features and embeddings (R, ...), each
    pair's request ``owner`` (N,) and the pairs' entity rows (N, ...) -> (objective logits (N, O), ranking
    scores (N,)).

    The same values as :meth:`MonorecModel.rank` and :meth:`MonorecModel.blend_scores` on the pairs' rows,
    computed in another order: the bottom's first layers take each request's context share once
    (:class:`_ContextShared`); the bottom gives each row its own canvas's representation only
    (``own_task``: MMoE mixes its experts by that canvas's gate alone), every canvas tower runs on every row
    and each row's own is picked (:meth:`~monorec.models.multitask.TaskTowers.gathered`, no data-dependent
    branch); column 0 of the (N, S)
    source scores is set to the retrieval score context . entity. The score is in the graph because a torch
    op right after an ONNX Runtime call costs several times its warm cost on a serving thread (measured: the
    first ~85 us), so the serving path leaves the graph with the numbers it sorts."""

    def __init__(self, model: MonorecModel) -> None:
        super().__init__()
        self.model = model
        self.requests = _Requests()
        self.bottom = copy.deepcopy(model.bottom)  # the model itself keeps its plain layers
        for parent, name in self.bottom.input_layers():
            layer = getattr(parent, name)
            setattr(parent, name, _ContextShared(layer, model.context_encoder.feature_dim, self.requests))

    def forward(
        self,
        ctx_feats: torch.Tensor,
        ctx_emb: torch.Tensor,
        owner: torch.Tensor,
        item_feats: torch.Tensor,
        item_emb: torch.Tensor,
        task: torch.Tensor,
        sources: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        pair_emb = ctx_emb.index_select(0, owner)
        dot = (pair_emb * item_emb).sum(dim=1, keepdim=True)
        sources = torch.cat([dot, sources[:, 1:]], dim=1)
        # the text and category matches read the context features per pair; without them the rows are never gathered
        pair_feats = ctx_feats.index_select(0, owner) if model.text_slices or model.category_slices else ctx_feats
        pairs = model.pair_inputs(pair_feats, pair_emb, item_feats, item_emb, sources)
        self.requests.feats, self.requests.owner = ctx_feats, owner
        logits = model.towers.gathered(self.bottom.own_task(pairs, task), task)
        return logits, model.blend_scores(logits, task, sources)


def export_onnx(model: MonorecModel, example_ctx: Mapping[str, torch.Tensor], folder: Path) -> None:
    """Writes ``folder/context.onnx`` and ``folder/ranker.onnx`` (weights inside, batch dimension dynamic).

    Args:
        model: in eval mode.
        example_ctx: featurized contexts of at least 2 requests (the names and dtypes the graph takes).
    """
    from torch.export import Dim

    model.eval()
    rows = Dim("rows", min=1, max=MAX_ROWS)
    requests = Dim("requests", min=1, max=MAX_ROWS)
    ctx = dict(example_ctx)
    with torch.no_grad():
        feats, emb = model.encode_context(ctx)
    n = 3  # candidates per example request: the pairs' batch differs from the contexts'
    pairs = (
        feats,
        emb,
        torch.arange(len(feats)).repeat_interleave(n, 0),
        torch.zeros(len(feats) * n, model.item_encoder.feature_dim),
        torch.nn.functional.normalize(torch.ones(len(feats) * n, emb.shape[1]), dim=1),
        ctx["task_type"].repeat_interleave(n, 0),
        torch.zeros(len(feats) * n, len(model.source_weights[0])),
    )
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            torch.onnx.export(
                ContextGraph(model),
                (),
                kwargs={"ctx": ctx},
                f=folder / CONTEXT_FILE,
                input_names=list(ctx),
                output_names=["feats", "emb"],
                dynamic_shapes={"ctx": {k: {0: rows} for k in ctx}},
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            torch.onnx.export(
                RankerGraph(model),
                pairs,
                f=folder / RANKER_FILE,
                input_names=list(RANKER_INPUTS),
                output_names=list(RANKER_OUTPUTS),
                dynamic_shapes={k: {0: requests if k in ("ctx_feats", "ctx_emb") else rows} for k in RANKER_INPUTS},
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
