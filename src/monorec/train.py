"""The training loop: explicit, seeded, CPU by default and CUDA when present.

The rows are a :class:`~monorec.training_data.TrainingData`; one optimisation step is a
:class:`~monorec.train_step.TrainStep` (the ranker's masked objective losses, the retrieval softmax and
the every-prefix loss of entity histories, weighted). After each epoch the validation split is evaluated
(loss, or NDCG@K over requests); the best epoch is kept, checkpoints are written, and training stops after
``patience`` epochs without improvement. The candidate sources of the version are fitted here once, on the
training period, and serve the rows' source inputs, every validation and the fusion weights.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from monorec.bundle import ModelBundle
from monorec.config import ProjectConfig
from monorec.data.features import Featurizer
from monorec.data.prepared import PreparedData
from monorec.data_parallel import DataParallel
from monorec.devices import resolve_device
from monorec.errors import DataError
from monorec.evaluation.evaluate import evaluate_recommender, request_sets
from monorec.evaluation.fusion import FusionRule, tune_source_weights
from monorec.evaluation.recommenders import ModelRecommender
from monorec.models.model import build_model, model_kwargs
from monorec.popular import PopularLists
from monorec.retrieval.cooccurrence import COOCCURRENCE_COLUMNS
from monorec.retrieval.sources import CandidateSources, fit_cooccurrence, index_catalogue
from monorec.threads import reproducible, training_threads
from monorec.train_step import TrainStep
from monorec.training_data import TrainingData, TrainingShards
from monorec.weight_average import WeightAverage

__all__ = ["train", "validation_score"]


VALIDATION_SEED = 0x76616C  # the seed of the validation rows' sample (when capped)


def validation_score(val: dict[str, dict[str, Any]], k: int, canvases: tuple[str, ...] = ()) -> float:
    """Model selection score: NDCG@k averaged over validation requests (not over canvases), of
    ``canvases`` only when given (``train.selection_canvases``).

    A canvas with a handful of validation requests (search on MovieLens) swings wildly from epoch to
    epoch; an unweighted mean over canvases lets that noise pick the epoch for every canvas.
    """
    chosen = [m for c, m in val.items() if not canvases or c in canvases]
    weighted = [(m[f"ndcg@{k}"], m["requests"]) for m in chosen if m["requests"]]
    total = sum(n for _, n in weighted)
    return float(sum(v * n for v, n in weighted) / total) if total else 0.0


def validation_rows(rows: pl.LazyFrame, cap: int) -> pl.DataFrame:
    """The validation rows whose losses are the learning curves: all of them, or when there are more than
    ``cap`` (0: no cap), the rows of a seeded hash-sample of requests (whole requests) of about ``cap`` rows,
    so that a validation split larger than memory is not read whole."""
    total = int(rows.select(pl.len()).collect(engine="streaming").item())
    if not cap or total <= cap:
        return rows.collect()
    keep = cap / total
    return rows.filter(pl.col("request_id").hash(seed=VALIDATION_SEED) % 1_000_000 < int(keep * 1_000_000)).collect()


def train(
    config: ProjectConfig,
    prepared: PreparedData,
    *,
    canvases: tuple[str, ...] | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    device: str | None = None,
    parallel: DataParallel | None = None,
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
        parallel: this worker's place among data-parallel workers (:mod:`monorec.data_parallel`); the
            lead's bundle is the model, the others' are copies without the fusion and the history.

    Returns:
        The best epoch's model as a :class:`ModelBundle` (``meta`` holds the history).
    """
    threads = training_threads(config.train.threads)
    with reproducible(threads):  # the same seed gives the same model on a busy machine too
        bundle = _train(config, prepared, canvases, checkpoint_dir, progress, device, parallel or DataParallel())
    bundle.meta["threads"] = threads
    return bundle


def _train(
    config: ProjectConfig,
    prepared: PreparedData,
    canvases: tuple[str, ...] | None,
    checkpoint_dir: str | Path | None,
    progress: bool,
    device: str | None,
    parallel: DataParallel,
) -> ModelBundle:
    cfg = config.only_canvases(canvases) if canvases else config
    lead = parallel.lead  # validation, selection, checkpoints and progress are the lead worker's
    t = cfg.train
    torch.manual_seed(t.seed)
    np.random.seed(t.seed)
    dev = resolve_device(device or t.device)
    names = cfg.canvas_names
    empty = [c for c in names if c in prepared.empty_canvases]
    if len(empty) == len(names):
        raise DataError("prepared data", f"no training rows for canvas(es) {empty}: nothing to train on")
    # fitted on the training rows without holding them (aggregates over a scan when the data is opened)
    featurizer = Featurizer(cfg).fit(prepared.scan("train", names), prepared.catalogue)
    kwargs = model_kwargs(cfg, featurizer)
    kwargs["sparse_tables"] = prepared.catalogue.height > t.full_softmax_max  # see monorec.models.towers
    model = build_model(kwargs).to(dev)
    shards = TrainingShards(prepared.merged_scan(names), t.shard_rows, t.max_train_rows)
    # the training rows' proposals: what the ranker reads as source inputs, and where its negatives come from
    rows_propose = bool(model.source_columns) or t.retrieval_negatives > 0
    # the candidate sources of the version being trained, fitted on the training period: built once, they
    # give the training rows their source inputs and every validation its candidates
    responses = prepared.responses("train", [*PopularLists.columns(cfg), *COOCCURRENCE_COLUMNS])
    popular = PopularLists.fit(responses, cfg, catalogue=prepared.catalogue)
    # each user's own pair counts only for the training rows' proposals (they leave them out), which are
    # off by default: otherwise they are computed and held for nothing (they grow with the log)
    cooccurrence = fit_cooccurrence(cfg, responses, keep_own=rows_propose)
    del responses  # every training response (5.8M at 50x the demo's logs): not needed past the two fits
    sources = CandidateSources(cfg, index_catalogue(prepared.catalogue), cooccurrence, popular)
    row_sources = sources if rows_propose else None
    counts = shards.response_counts(cfg, prepared.catalogue)  # every shard's logQ is the whole epoch's

    def shard_data(shard: int) -> TrainingData:
        return TrainingData.build(
            cfg,
            featurizer,
            shards.read(shard),
            prepared.catalogue,
            dev,
            sources=row_sources,
            leave_own_out=True,
            response_counts=counts,
        )

    data, built = shard_data(0), 0  # with one shard: the training data of every epoch
    epoch_rows = len(data) if shards.count == 1 else len(shards)  # rows trained on per epoch
    generator = torch.Generator().manual_seed(t.seed)
    stepper = TrainStep(model, cfg, data, generator, parallel)
    by_ndcg = t.selection in ("ndcg", "served")
    val_requests = request_sets(cfg, prepared, "valid", max_requests=t.val_requests) if by_ndcg else {}
    # the validation rows' losses are the learning curves of every run (and the selection score of "loss"):
    # unweighted, they measure the objectives themselves whatever the training rows' sample weights
    val_rows = validation_rows(prepared.scan("valid", names), t.val_rows)
    val_data = TrainingData.build(cfg, featurizer, val_rows, prepared.catalogue, dev, sources=row_sources)
    val_data = val_data.without_weights()
    bundle = ModelBundle(cfg, featurizer, model, kwargs, popular=popular, cooccurrence=cooccurrence)
    average = None
    if t.weight_average_epochs > 0:  # validation and the kept model read the average; training never does
        steps_per_epoch = max(1, math.ceil(epoch_rows / t.batch_size))  # each worker steps every batch
        average = WeightAverage(model, max(1.0, t.weight_average_epochs * steps_per_epoch))

    history: list[dict[str, Any]] = []
    best_score, best_state, best_epoch, start_epoch = float("-inf"), copy.deepcopy(model.state_dict()), -1, 0
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None  # the lead writes; all resume from it
    if ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, map_location=dev, weights_only=True)  # tensors and plain containers only
        stepper.load_state_dict(saved["stepper"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])  # dropout draws from the global generator
        history, best_score, best_epoch = saved["history"], saved["best_score"], saved["best_epoch"]
        best_state, start_epoch = saved["best_model"], saved["epoch"] + 1
        if average is not None and saved.get("weight_average"):
            average.restore(saved["weight_average"])
    stale = len(history) - (best_epoch + 1)  # epochs since the best (0 on a fresh start)
    for epoch in range(start_epoch, t.epochs):
        if stale >= t.patience:
            break
        started = time.perf_counter()
        losses = []
        task_losses: dict[str, list[float]] = {n: [] for n in stepper.task_names}
        epoch_rows = 0
        for shard in shards.order(epoch, t.seed):
            if shard != built:  # one shard's rows and contexts in memory at a time
                data, built = shard_data(shard), shard
                stepper.data = data
            epoch_rows += len(data)
            bar = tqdm(
                parallel.shard(data.batches(t.batch_size, generator)),
                desc=f"epoch {epoch + 1}/{t.epochs} [{'+'.join(names)}]"
                + (f" shard {shard + 1}/{shards.count}" if shards.count > 1 else ""),
                disable=None if progress and lead else True,
                leave=False,
            )
            for idx in bar:
                stats = stepper.step(idx)
                if average is not None:
                    average.update()
                losses.append(stats["loss"])
                for n, v in stats["tasks"].items():
                    task_losses[n].append(v)
                bar.set_postfix(loss=f"{stats['loss']:.3f}")
        elapsed = time.perf_counter() - started
        val: dict[str, Any] = {}
        with average.applied() if average is not None else nullcontext():
            val_losses = stepper.validation_losses(val_data, t.batch_size, t.seed) if len(val_data) and lead else {}
            if not lead:
                score = float("nan")
            elif t.selection == "loss":
                score = -sum(val_losses.values()) if val_losses else float("-inf")  # higher is better
            else:
                depth = cfg.evaluate.retrieval_depth
                recommender = ModelRecommender(bundle, prepared.catalogue, depth=depth, sources=sources)
                if t.selection == "served":
                    # what serving would rank by after this epoch: the fusion is chosen anew for each epoch's
                    # ranker, as it will be for the kept one (validation requests only)
                    rule = FusionRule.of(t)
                    fused = tune_source_weights(bundle, recommender, val_requests, cfg.evaluate.k, rule)
                    val = {c: {**m, "requests": len(val_requests[c])} for c, m in fused.items()}
                else:
                    val = evaluate_recommender(recommender, val_requests, cfg.evaluate.k)
                score = validation_score(val, cfg.evaluate.k, t.selection_canvases)
        score = parallel.share(score)  # every worker stops when the lead does
        history.append(
            {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                "val_score": score,
                "seconds": elapsed,
                "samples_per_s": epoch_rows / elapsed,
                "val": val,
                # learning curves: each task's mean training loss this epoch, and its validation loss
                "train_losses": {n: float(np.mean(v)) for n, v in task_losses.items() if v},
                "val_losses": val_losses,
            }
        )
        if progress and lead:
            print(
                f"epoch {epoch + 1}: loss {np.mean(losses):.4f}  "
                f"validation {t.selection} score {score:.4f}  ({elapsed:.1f}s)"
            )
        if score > best_score:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = average.state_dict() if average is not None else copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if ckpt is not None and lead:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            torch.save(
                {
                    "stepper": stepper.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "best_model": best_state,
                    "epoch": epoch,
                    "weight_average": average.checkpoint() if average is not None else None,
                },
                tmp,
            )
            tmp.replace(ckpt)
    model.load_state_dict(best_state)
    model.eval()
    if not lead:
        sources.close()
        return ModelBundle(cfg, featurizer, model, kwargs, popular=popular, cooccurrence=cooccurrence)
    # the ranking score's weight of the retrieval order, per canvas, chosen on validation requests
    fusion_requests = val_requests or request_sets(cfg, prepared, "valid", max_requests=t.val_requests)
    recommender = ModelRecommender(bundle, prepared.catalogue, depth=cfg.evaluate.retrieval_depth, sources=sources)
    fusion = tune_source_weights(bundle, recommender, fusion_requests, cfg.evaluate.k, FusionRule.of(t))
    model.cpu()  # a trained bundle leaves training on the CPU, where evaluation, export and serving run
    bundle.meta = {
        "canvases": list(names),
        "best_epoch": best_epoch,
        "best_val_score": best_score,
        "selection": t.selection,
        "history": history,
        "source_weights": fusion,
        "device": str(dev),
        "train_rows": epoch_rows,
        "train_shards": shards.count,
        "mixture": prepared.manifest.get("mixture", {}),
        # the per-sample loss weights trained with: canvas -> task -> expression, training rows' mean, nulls
        "sample_weights": {c: prepared.manifest.get("sample_weights", {}).get(c, {}) for c in names},
        "torch": torch.__version__,
    }
    sources.close()
    cooccurrence.own = None  # the training rows' leave-one-user-out counts: not part of the version
    return bundle
