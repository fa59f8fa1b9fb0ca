"""The serving halves of the model as exportable graphs, and their export to ONNX (issue 13: the model
path off the GIL). A request needs two forwards: the context tower (one row per request) and the ranker
(one row per (request, candidate) pair). Each is wrapped here with a forward that has no data-dependent
branch, so ``torch.export`` keeps the batch dimension symbolic, and written as an ONNX file that ONNX
Runtime executes without the GIL (:mod:`monorec.models.onnx_model`). The PyTorch modules stay the
reference: a version's export is checked against them on a fixed batch (``tests/test_onnx_runtime.py``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
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
RANKER_INPUTS = ("ctx_feats", "ctx_emb", "item_feats", "item_emb", "task", "sources")
RANKER_OUTPUTS = ("logits", "scores")  # an export before the scores moved into the graph has logits only
OPSET = 18
MAX_ROWS = 1 << 24  # the symbolic batch's upper bound (torch.export wants one)


class ContextGraph(nn.Module):
    """The context tower: the featurizer's arrays (name -> (B, ...)) -> (features (B, F_c), embedding (B, D))."""

    def __init__(self, model: MonorecModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ctx: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_context(ctx)


class RankerGraph(nn.Module):
    """The ranker on (request, candidate) pairs, row-aligned (N, ...) -> (objective logits (N, O), ranking
    scores (N,)): the logits of :meth:`MonorecModel.rank`, with every canvas tower run on every row and each
    row's own picked (:meth:`~monorec.models.multitask.TaskTowers.gathered`), and the score of
    :meth:`MonorecModel.blend_scores` with the (N, S) source scores' column 0 set to the retrieval score
    context . entity. The score is in the graph because every torch op after an ONNX Runtime call costs
    several times its warm cost on a serving thread (measured: the first one ~85 us, a cold dispatcher), so
    the serving path leaves the graph with the numbers it sorts."""

    def __init__(self, model: MonorecModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        ctx_feats: torch.Tensor,
        ctx_emb: torch.Tensor,
        item_feats: torch.Tensor,
        item_emb: torch.Tensor,
        task: torch.Tensor,
        sources: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dot = (ctx_emb * item_emb).sum(dim=1, keepdim=True)
        sources = torch.cat([dot, sources[:, 1:]], dim=1)
        h = self.model.shared_ranking(ctx_feats, ctx_emb, item_feats, item_emb, sources)
        logits = self.model.towers.gathered(h, task)
        return logits, self.model.blend_scores(logits, task, sources)


def export_onnx(model: MonorecModel, example_ctx: Mapping[str, torch.Tensor], folder: Path) -> None:
    """Writes ``folder/context.onnx`` and ``folder/ranker.onnx`` (weights inside, batch dimension dynamic).

    Args:
        model: in eval mode.
        example_ctx: featurized contexts of at least 2 requests (the names and dtypes the graph takes).
    """
    from torch.export import Dim

    model.eval()
    rows = Dim("rows", min=1, max=MAX_ROWS)
    ctx = dict(example_ctx)
    with torch.no_grad():
        feats, emb = model.encode_context(ctx)
    n = 3  # candidates per example request: the pairs' batch differs from the contexts'
    pairs = (
        feats.repeat_interleave(n, 0),
        emb.repeat_interleave(n, 0),
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
                dynamic_shapes={k: {0: rows} for k in RANKER_INPUTS},
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
