"""The training loop: explicit, seeded, CPU by default and CUDA when present.

One step: contexts and their logged entities -> the ranker's objective logits (masked losses where a
canvas has no such label) + the retrieval loss (in-batch and uniform negatives with logQ correction)
over rows whose primary objective is positive; the losses are combined by fixed or learned uncertainty
weights. Embedding tables are sparse and stepped by SparseAdam (row-wise), the rest by AdamW.
After each epoch the validation split is evaluated (mean NDCG@K over canvases); the best epoch is kept,
checkpoints are written, and training stops after ``patience`` epochs without improvement.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from monorec.bundle import ModelBundle, context_tensors, item_tensors
from monorec.config import ProjectConfig
from monorec.data.features import UNKNOWN_INDEX, Featurizer
from monorec.data.prepared import PreparedData
from monorec.errors import DataError
from monorec.evaluation.evaluate import evaluate_recommender, request_sets
from monorec.evaluation.recommenders import ModelRecommender
from monorec.evaluation.requests import entity_positions
from monorec.models.losses import FixedWeighting, UncertaintyWeighting, masked_objective_losses, sampled_softmax_loss
from monorec.models.model import MonorecModel, build_model, model_kwargs
from monorec.popular import PopularLists

__all__ = ["TrainStep", "TrainingData", "resolve_device", "train"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class TrainingData:
    """Tensors of the merged training rows: ``ctx`` field -> (N, ...), ``entity`` (N,) catalogue positions,
    ``labels`` (N, O), ``primary`` (N,) 1.0 where the row's canvas's primary objective is positive;
    ``items`` the catalogue's item features; ``logq`` (N_items,) log in-batch sampling probability."""

    ctx: dict[str, torch.Tensor]
    entity: torch.Tensor
    labels: torch.Tensor
    primary: torch.Tensor
    items: dict[str, torch.Tensor]
    log_prob: torch.Tensor

    @classmethod
    def build(
        cls,
        config: ProjectConfig,
        featurizer: Featurizer,
        rows: pl.DataFrame,
        catalogue: pl.DataFrame,
        device: torch.device,
    ) -> TrainingData:
        positions = entity_positions(catalogue, rows["entity_id"])
        if (positions < 0).any():
            rows, positions = rows.filter(pl.Series(positions >= 0)), positions[positions >= 0]
        labels = featurizer.transform_labels(rows)
        names = [o.name for o in config.objectives]
        primary_index = np.array([names.index(c.primary) for c in config.canvases])
        ctx = featurizer.transform_context(rows)
        prim = labels[np.arange(len(labels)), primary_index[ctx["task_type"]]]
        primary = np.nan_to_num(prim, nan=0.0)
        counts = np.bincount(positions[primary == 1], minlength=catalogue.height).astype(np.float64)
        prob = (counts + 1e-3) / (counts.sum() + 1e-3 * len(counts))
        return cls(
            ctx=context_tensors(ctx, device),
            entity=torch.as_tensor(positions, device=device),
            labels=torch.as_tensor(labels, device=device),
            primary=torch.as_tensor(primary, device=device),
            items=item_tensors(featurizer.transform_catalogue(catalogue), device),
            log_prob=torch.as_tensor(np.log(prob), dtype=torch.float32, device=device),
        )

    def __len__(self) -> int:
        return len(self.entity)


class TrainStep:
    """Model + optimizers + loss weighting; ``step(batch_indices)`` runs one optimisation step."""

    def __init__(
        self, model: MonorecModel, config: ProjectConfig, data: TrainingData, generator: torch.Generator
    ) -> None:
        self.model, self.data, self.generator = model, data, generator
        t = config.train
        n_obj = len(config.objectives)
        self.binary = [o.kind == "binary" for o in config.objectives]
        if t.loss_weighting == "uncertainty":
            self.weighting: torch.nn.Module = UncertaintyWeighting(n_obj + 1)
        else:
            weights = [t.objective_weights.get(o.name, 1.0) for o in config.objectives] + [t.retrieval_weight]
            self.weighting = FixedWeighting(weights)
        self.weighting.to(data.labels.device)
        sparse = [p for n, p in model.named_parameters() if n.startswith("tables.") and n != "tables.text_missing"]
        sparse_ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in sparse_ids] + list(self.weighting.parameters())
        self.sparse_opt = torch.optim.SparseAdam(sparse, lr=t.sparse_lr)
        self.dense_opt = torch.optim.AdamW(dense, lr=t.lr)
        self.temperature = t.temperature
        self.id_dropout = t.id_dropout
        self.id_fields = [f.name for f in config.fields if f.kind in ("id", "id_list")]
        self.random_negatives = t.random_negatives
        self.n_items = len(data.items["entity"])

    def _drop_ids(self, ctx: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Replaces a share of known context ids (index >= 2) with the unknown index (cold-start training)."""
        out = dict(ctx)
        for name in self.id_fields:
            ids = ctx[name]
            drop = torch.rand(ids.shape, generator=generator).to(ids.device) < self.id_dropout
            out[name] = torch.where(drop & (ids >= 2), torch.full_like(ids, UNKNOWN_INDEX), ids)
        return out

    def losses(
        self, data: TrainingData, idx: torch.Tensor, generator: torch.Generator, *, training: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-task losses (O objectives + retrieval) of a batch, and which tasks were present.

        Returns:
            (losses (O + 1,), present (O + 1,) 0/1).
        """
        model = self.model
        ctx = {k: v[idx] for k, v in data.ctx.items()}
        if training and self.id_dropout > 0:
            ctx = self._drop_ids(ctx, generator)
        entity = data.entity[idx]
        cf, ce = model.encode_context(ctx)
        itf, ie = model.encode_items({k: v[entity] for k, v in data.items.items()})
        logits = model.rank(cf, ce, itf, ie, ctx["task_type"])
        obj_losses, counts = masked_objective_losses(logits, data.labels[idx], self.binary)
        pos = data.primary[idx] == 1
        retrieval = logits.new_zeros(())
        n_pos = int(pos.sum())
        if n_pos >= 2:
            neg = torch.randint(0, self.n_items, (self.random_negatives,), generator=generator).to(entity.device)
            _, ne = model.encode_items({k: v[neg] for k, v in data.items.items()})
            retrieval = sampled_softmax_loss(
                ce[pos],
                ie[pos],
                entity[pos],
                data.log_prob[entity[pos]] + math.log(n_pos),
                ne,
                neg,
                math.log(self.random_negatives / self.n_items),
                self.temperature,
            )
        present = torch.cat([counts > 0, torch.tensor([n_pos >= 2], device=counts.device)]).float()
        return torch.cat([obj_losses, retrieval[None]]), present

    def step(self, idx: torch.Tensor) -> dict[str, float]:
        """One optimisation step on the training rows ``idx``."""
        self.model.train()
        losses, present = self.losses(self.data, idx, self.generator, training=True)
        total = self.weighting(losses, present)
        self.sparse_opt.zero_grad(set_to_none=True)
        self.dense_opt.zero_grad(set_to_none=True)
        total.backward()
        self.sparse_opt.step()
        self.dense_opt.step()
        return {"loss": float(total.detach()), "retrieval": float(losses[-1].detach())}

    @torch.no_grad()
    def validation_loss(self, data: TrainingData, batch_size: int, seed: int) -> float:
        """Unweighted sum of the per-task losses, averaged over validation batches (seeded negatives)."""
        self.model.eval()
        generator = torch.Generator().manual_seed(seed)
        sums = torch.zeros(len(self.binary) + 1)
        weights = torch.zeros(len(self.binary) + 1)
        for idx in torch.arange(len(data), device=data.entity.device).split(batch_size):
            losses, present = self.losses(data, idx, generator)
            sums += (losses * present).cpu()
            weights += present.cpu()
        return float((sums / weights.clamp(min=1)).sum()) if len(data) else float("inf")

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "weighting": self.weighting.state_dict(),
            "sparse_opt": self.sparse_opt.state_dict(),
            "dense_opt": self.dense_opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.weighting.load_state_dict(state["weighting"])
        self.sparse_opt.load_state_dict(state["sparse_opt"])
        self.dense_opt.load_state_dict(state["dense_opt"])


def validation_score(val: dict[str, dict[str, Any]], k: int) -> float:
    """Model selection score: NDCG@k averaged over validation requests (not over canvases).

    A canvas with a handful of validation requests (search on MovieLens) swings wildly from epoch to
    epoch; an unweighted mean over canvases lets that noise pick the epoch for every canvas.
    """
    weighted = [(m[f"ndcg@{k}"], m["requests"]) for m in val.values() if m["requests"]]
    total = sum(n for _, n in weighted)
    return float(sum(v * n for v, n in weighted) / total) if total else 0.0


def train(
    config: ProjectConfig,
    prepared: PreparedData,
    *,
    canvases: tuple[str, ...] | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    device: str | None = None,
) -> ModelBundle:
    """Trains one model on the prepared data.

    Args:
        config: the project config.
        prepared: output of the prepare stage.
        canvases: train on these canvases only (baseline mode: one dedicated model per canvas).
        checkpoint_dir: where ``last.pt`` (resumable: model + optimizers + epoch) goes after each epoch;
            an existing ``last.pt`` there is resumed from.
        progress: show a progress bar.
        device: overrides ``train.device``.

    Returns:
        The best epoch's model as a :class:`ModelBundle` (``meta`` holds the history).
    """
    cfg = config.only_canvases(canvases) if canvases else config
    t = cfg.train
    torch.manual_seed(t.seed)
    np.random.seed(t.seed)
    dev = resolve_device(device or t.device)
    names = cfg.canvas_names
    empty = [c for c in names if c in prepared.empty_canvases]
    if len(empty) == len(names):
        raise DataError("prepared data", f"no training rows for canvas(es) {empty}: nothing to train on")
    featurizer = Featurizer(cfg).fit(prepared.rows("train", names), prepared.catalogue)
    kwargs = model_kwargs(cfg, featurizer)
    model = build_model(kwargs).to(dev)
    rows = prepared.merged(names)
    if t.max_train_rows and rows.height > t.max_train_rows:
        rows = rows.head(t.max_train_rows)
    data = TrainingData.build(cfg, featurizer, rows, prepared.catalogue, dev)
    generator = torch.Generator().manual_seed(t.seed)
    stepper = TrainStep(model, cfg, data, generator)
    val_requests = request_sets(cfg, prepared, "valid", max_requests=t.val_requests) if t.selection == "ndcg" else {}
    val_data = None
    if t.selection == "loss":
        val_data = TrainingData.build(cfg, featurizer, prepared.rows("valid", names), prepared.catalogue, dev)
    bundle = ModelBundle(cfg, featurizer, model, kwargs, popular=PopularLists.fit(prepared.responses("train"), cfg))

    history: list[dict[str, Any]] = []
    best_score, best_state, best_epoch, start_epoch = float("-inf"), copy.deepcopy(model.state_dict()), -1, 0
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, map_location=dev, weights_only=True)  # tensors and plain containers only
        stepper.load_state_dict(saved["stepper"])
        generator.set_state(saved["generator"])
        history, best_score, best_epoch = saved["history"], saved["best_score"], saved["best_epoch"]
        best_state, start_epoch = saved["best_model"], saved["epoch"] + 1
    stale = len(history) - (best_epoch + 1)  # epochs since the best (0 on a fresh start)
    for epoch in range(start_epoch, t.epochs):
        if stale >= t.patience:
            break
        started = time.perf_counter()
        perm = torch.randperm(len(data), generator=generator).to(dev)
        batches = perm.split(t.batch_size)
        bar = tqdm(
            batches,
            desc=f"epoch {epoch + 1}/{t.epochs} [{'+'.join(names)}]",
            disable=None if progress else True,
            leave=False,
        )
        losses = []
        for idx in bar:
            stats = stepper.step(idx)
            losses.append(stats["loss"])
            bar.set_postfix(loss=f"{stats['loss']:.3f}")
        elapsed = time.perf_counter() - started
        val: dict[str, Any] = {}
        if val_data is not None:
            score = -stepper.validation_loss(val_data, t.batch_size, t.seed)  # higher is better
        else:
            recommender = ModelRecommender(bundle, prepared.catalogue, depth=cfg.evaluate.retrieval_depth)
            val = evaluate_recommender(recommender, val_requests, cfg.evaluate.k)
            score = validation_score(val, cfg.evaluate.k)
        history.append(
            {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                "val_score": score,
                "seconds": elapsed,
                "samples_per_s": len(data) / elapsed,
                "val": val,
            }
        )
        if progress:
            print(
                f"epoch {epoch + 1}: loss {np.mean(losses):.4f}  "
                f"validation {t.selection} score {score:.4f}  ({elapsed:.1f}s)"
            )
        if score > best_score:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if ckpt is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            torch.save(
                {
                    "stepper": stepper.state_dict(),
                    "generator": generator.get_state(),
                    "history": history,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "best_model": best_state,
                    "epoch": epoch,
                },
                tmp,
            )
            tmp.replace(ckpt)
    model.load_state_dict(best_state)
    model.eval()
    bundle.meta = {
        "canvases": list(names),
        "best_epoch": best_epoch,
        "best_val_score": best_score,
        "selection": t.selection,
        "history": history,
        "device": str(dev),
        "train_rows": len(data),
        "mixture": prepared.manifest.get("mixture", {}),
        "torch": torch.__version__,
    }
    return bundle
