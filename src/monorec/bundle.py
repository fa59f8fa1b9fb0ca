"""A trained model with everything needed to use it: config, featurizer, constructor arguments, weights.

Saved as plain files, loadable without unpickling anything:
``config.json`` (the project config), ``schema.json`` (the unified context contract), ``featurizer.json``,
``model.json`` (constructor arguments), ``model.safetensors`` (weights), ``meta.json`` (training record),
``popular.json`` (popular entities per canvas: the serving fallback), ``cooccurrence.npz`` (the
co-occurrence candidate source, fitted on the training period).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch
from safetensors.torch import load_model, save_model

from monorec.artifacts import atomic_dir, read_json, verify_manifest, write_json
from monorec.config import ProjectConfig, parse_config
from monorec.data.features import Featurizer, ItemArrays
from monorec.errors import ArtifactError
from monorec.models.graphs import export_onnx as export_onnx_graphs
from monorec.models.model import MonorecModel, build_model
from monorec.popular import PopularLists
from monorec.retrieval.cooccurrence import CooccurrenceTable
from monorec.retrieval.sources import CandidateSources, index_catalogue
from monorec.schema import ContextSchema

__all__ = ["ModelBundle", "context_tensors", "item_tensors"]


def item_tensors(items: ItemArrays, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """ItemArrays -> dict of tensors on ``device``."""
    return {
        "entity": torch.as_tensor(items.entity, device=device),
        "entity_type": torch.as_tensor(items.entity_type, device=device),
        "categories": torch.as_tensor(items.categories, device=device),
        "title": torch.as_tensor(items.title, device=device),
        "numeric": torch.as_tensor(items.numeric, device=device),
    }


def context_tensors(arrays: dict[str, Any], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, device=device) for k, v in arrays.items()}


@dataclass
class ModelBundle:
    config: ProjectConfig
    featurizer: Featurizer
    model: MonorecModel
    model_kwargs: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    popular: PopularLists = field(default_factory=PopularLists)
    cooccurrence: CooccurrenceTable | None = None
    folder: Path | None = None  # where it was loaded from (its ONNX export, when it has one, is there)

    def candidate_sources(self, catalogue: pl.DataFrame) -> CandidateSources:
        """This version's lexical (over ``catalogue``, in memory), co-occurrence and popular sources."""
        table = self.cooccurrence or CooccurrenceTable.empty()
        return CandidateSources(self.config, index_catalogue(catalogue), table, self.popular)

    @property
    def schema(self) -> ContextSchema:
        return ContextSchema.from_config(self.config)

    def checksum(self) -> str:
        """A short hash of the model's weights (name, shape and bytes of every tensor): what an evaluation
        report records, so that only the metrics of this very model can publish it."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def item_embeddings(self, catalogue: pl.DataFrame, batch_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, F_i), embeddings (N, D)) of every catalogue entity, in eval mode, no grad."""
        device = next(self.model.parameters()).device
        items = item_tensors(self.featurizer.transform_catalogue(catalogue), device)
        if self.model.training:  # eval() walks every module: ~1 ms, a streamed batch's featurizing 10 times
            self.model.eval()
        feats, embs = [], []
        with torch.no_grad():
            for start in range(0, catalogue.height, batch_size):
                f, e = self.model.encode_items({k: v[start : start + batch_size] for k, v in items.items()})
                feats.append(f)
                embs.append(e)
        return torch.cat(feats), torch.cat(embs)

    def example_contexts(self) -> dict[str, torch.Tensor]:
        """Featurized contexts of one empty request per canvas (sentinels everywhere): the names, dtypes and
        widths of the context tower's inputs, e.g. to export it."""
        schema = self.schema
        records = [schema.normalize(c.name, {}) for c in self.config.canvases]
        return context_tensors(self.featurizer.transform_records(records))

    def save(
        self,
        path: str | Path,
        *,
        overwrite: bool = True,
        extra: dict[str, Any] | None = None,
        export_onnx: bool = False,
    ) -> Path:
        """Writes the bundle atomically (a complete directory or nothing); ``extra`` maps file names to
        JSON payloads written inside it (covered by the manifest's checksums). With ``export_onnx`` the
        context tower and the ranker are exported too (:func:`monorec.models.graphs.export_onnx`)."""
        with atomic_dir(
            path, manifest={"kind": "model", "schema": self.schema.fingerprint()}, overwrite=overwrite
        ) as tmp:
            write_json(tmp / "config.json", self.config.to_dict())
            write_json(tmp / "schema.json", self.schema.to_dict())
            self.featurizer.save(tmp / "featurizer.json")
            write_json(tmp / "model.json", self.model_kwargs)
            write_json(tmp / "meta.json", self.meta)
            write_json(tmp / "popular.json", self.popular.to_dict())
            if self.cooccurrence is not None:
                self.cooccurrence.save(tmp / "cooccurrence.npz")
            # save_model de-duplicates the embedding tables shared by the two towers
            save_model(self.model, str(tmp / "model.safetensors"))
            if export_onnx:
                export_onnx_graphs(self.model, self.example_contexts(), tmp)
            for name, payload in (extra or {}).items():
                write_json(tmp / name, payload)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> ModelBundle:
        """Loads a saved bundle after checking its manifest (missing or corrupt files fail loudly).

        Raises:
            ArtifactError: incomplete, corrupt or incompatible bundle.
        """
        path = Path(path)
        verify_manifest(path)
        config = parse_config(read_json(path / "config.json"), str(path / "config.json"))
        featurizer = Featurizer.load(config, path / "featurizer.json")
        kwargs = read_json(path / "model.json")
        model = build_model(kwargs)
        try:
            load_model(model, str(path / "model.safetensors"), strict=True, device=device)
        except (RuntimeError, OSError, ValueError) as exc:
            raise ArtifactError(f"{path}: weights do not load into the model: {exc}") from None
        model.to(device).eval()
        # bundles written before popular lists existed have none: their fallback answers an empty list
        popular = PopularLists.from_dict(read_json(path / "popular.json")) if (path / "popular.json").exists() else None
        # bundles written before candidate sources have no co-occurrence table: that source proposes nothing
        table = CooccurrenceTable.load(path / "cooccurrence.npz") if (path / "cooccurrence.npz").exists() else None
        meta = read_json(path / "meta.json")
        return cls(config, featurizer, model, kwargs, meta, popular or PopularLists(), table, folder=path)
