"""A version's exported graphs (:mod:`monorec.models.graphs`) in ONNX Runtime: the serving model path's
forwards without the GIL. Each session runs on ONE intra-op thread with spinning off: parallelism comes
from the serving threads and processes (each request's forward on one core), and an idle session must not
burn the core another thread needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from monorec.errors import ArtifactError
from monorec.models.graphs import CONTEXT_FILE, RANKER_FILE, RANKER_INPUTS, RANKER_OUTPUTS

__all__ = ["OnnxModel"]


class OnnxModel:
    """The context tower and the ranker of one version, from ``folder``'s ``context.onnx``/``ranker.onnx``.

    Raises:
        ArtifactError: a file is missing or ONNX Runtime cannot load it.
    """

    def __init__(self, folder: Path, *, threads: int = 1) -> None:
        import onnxruntime as ort  # only where a version serves through it

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: unused initialisers of the export are notes, not news
        self._sessions = {}
        for name in (CONTEXT_FILE, RANKER_FILE):
            path = folder / name
            if not path.exists():
                raise ArtifactError(f"{path} is missing: the version was published without its ONNX export")
            try:
                self._sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
                raise ArtifactError(f"{path} does not load in ONNX Runtime: {exc}") from None
        self.context_inputs = [i.name for i in self._sessions[CONTEXT_FILE].get_inputs()]
        ranker = self._sessions[RANKER_FILE]
        inputs, outputs = [i.name for i in ranker.get_inputs()], [o.name for o in ranker.get_outputs()]
        if inputs != list(RANKER_INPUTS) or outputs != list(RANKER_OUTPUTS):
            raise ArtifactError(
                f"{folder / RANKER_FILE} takes {inputs} and gives {outputs}, this monorec's ranker graph takes "
                f"{list(RANKER_INPUTS)} and gives {list(RANKER_OUTPUTS)}: publish the version again to re-export it"
            )

    @staticmethod
    def exported(folder: Path) -> bool:
        """Whether ``folder`` holds both graphs."""
        return (folder / CONTEXT_FILE).exists() and (folder / RANKER_FILE).exists()

    def encode_context(self, ctx: Mapping[str, torch.Tensor | np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """The featurizer's arrays (name -> (B, ...), numpy or their tensors) -> (features (B, F_c), embedding
        (B, D))."""
        feed = {name: _array(ctx[name]) for name in self.context_inputs}
        feats, emb = self._sessions[CONTEXT_FILE].run(None, feed)
        return torch.from_numpy(feats), torch.from_numpy(emb)

    def rank(
        self,
        ctx_feats: torch.Tensor | np.ndarray,
        ctx_emb: torch.Tensor | np.ndarray,
        owner: torch.Tensor | np.ndarray,
        item_feats: torch.Tensor | np.ndarray,
        item_emb: torch.Tensor | np.ndarray,
        task: torch.Tensor | np.ndarray,
        sources: torch.Tensor | np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The requests' context rows (R, ...), each pair's request (N,) and the pairs' entity rows, tasks
        and (N, S) source scores -> (ranking scores (N,), objective logits (N, O)), column 0 of the source
        scores computed in the graph (see :class:`~monorec.models.graphs.RankerGraph`)."""
        arrays = (ctx_feats, ctx_emb, owner, item_feats, item_emb, task, sources)
        feed = {name: _array(a) for name, a in zip(RANKER_INPUTS, arrays, strict=True)}
        logits, scores = self._sessions[RANKER_FILE].run(list(RANKER_OUTPUTS), feed)
        return scores, logits


def _array(t: torch.Tensor | np.ndarray) -> np.ndarray:
    a = t.numpy() if isinstance(t, torch.Tensor) else t
    return np.ascontiguousarray(a)
