"""The training loop: explicit, seeded, CPU by default and CUDA when present.

One step: contexts and their logged entities -> the ranker's objective logits (masked losses where a
canvas has no such label; the logged negatives plus negatives drawn from the retrieval itself) + the
retrieval loss over rows whose primary objective is positive (the softmax over the whole catalogue, or
in-batch and uniform negatives with logQ correction above ``train.full_softmax_max``) + the every-prefix
loss of entity histories (each prefix predicts the next entity); the losses are combined by fixed or
learned uncertainty weights. Embedding tables have their own learning rate (SparseAdam, row-wise, when
they are sparse). After each epoch the validation split is evaluated (loss, or NDCG@K over requests);
the best epoch is kept, checkpoints are written, and training stops after ``patience`` epochs without
improvement.
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
import torch.nn.functional as F
from tqdm.auto import tqdm

from monorec.bundle import ModelBundle, context_tensors, item_tensors
from monorec.config import ProjectConfig
from monorec.data.features import UNKNOWN_INDEX, Featurizer
from monorec.data.prepared import PreparedData
from monorec.errors import DataError
from monorec.evaluation.evaluate import evaluate_recommender, request_sets
from monorec.evaluation.fusion import tune_source_weights
from monorec.evaluation.recommenders import ModelRecommender
from monorec.evaluation.requests import entity_positions
from monorec.models.losses import FixedWeighting, UncertaintyWeighting, masked_objective_losses, sampled_softmax_loss
from monorec.models.model import MonorecModel, build_model, model_kwargs
from monorec.popular import PopularLists
from monorec.retrieval.proposals import SourceProposals
from monorec.retrieval.sources import CandidateSources, fit_cooccurrence, index_catalogue
from monorec.threads import reproducible, training_threads

__all__ = ["TrainStep", "TrainingData", "resolve_device", "train"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class TrainingData:
    """Tensors of the merged training rows, their request contexts stored once per request.

    ``ctx`` field -> (Q, ...) the contexts of the Q distinct requests; ``context_of_row`` (N,) which of them
    each row answers (rows sorted by request: a request's rows are contiguous); ``entity`` (N,) catalogue
    positions, ``labels`` (N, O), ``primary`` (N,) 1.0 where the row's canvas's primary objective is
    positive; ``items`` the catalogue's item features; ``log_prob`` (N_items,) log in-batch sampling
    probability. The logged and sampled negatives of a request share its context: encoding it once per
    request, not once per row, is what keeps a sequence encoder affordable. ``proposals``: what the
    offline candidate sources propose for each request (the ranker's source inputs, and negatives drawn
    the way serving presents candidates); for training rows without the user's own co-occurrences.
    """

    ctx: dict[str, torch.Tensor]
    context_of_row: torch.Tensor
    entity: torch.Tensor
    labels: torch.Tensor
    primary: torch.Tensor
    items: dict[str, torch.Tensor]
    log_prob: torch.Tensor
    # (V,) catalogue position of each entity-table index (-1: the sentinels, or an entity not in it)
    table_position: torch.Tensor
    primary_index: torch.Tensor  # (T,) the objective column of each canvas's primary objective
    proposals: SourceProposals | None = None

    @classmethod
    def build(
        cls,
        config: ProjectConfig,
        featurizer: Featurizer,
        rows: pl.DataFrame,
        catalogue: pl.DataFrame,
        device: torch.device,
        *,
        sources: CandidateSources | None = None,
        leave_own_out: bool = False,
    ) -> TrainingData:
        """``sources``: propose for every request (``leave_own_out``: training rows, whose users' responses
        the co-occurrence table counted)."""
        positions = entity_positions(catalogue, rows["entity_id"])
        if (positions < 0).any():
            rows, positions = rows.filter(pl.Series(positions >= 0)), positions[positions >= 0]
        # one context per request: rows without a request id (or a stratified copy of one) stay their own
        key = pl.col("request_id") if "request_id" in rows.columns else pl.lit(None, dtype=pl.String)
        rows = rows.with_columns(
            pl.Series("_entity", positions),
            pl.when(key.is_null()).then(pl.int_range(pl.len()).cast(pl.String)).otherwise(key).alias("_request"),
        )
        rows = rows.with_columns(pl.col("_request").rank("dense").cast(pl.Int64).sub(1).alias("_q")).sort(
            "_q", maintain_order=True
        )
        positions = rows["_entity"].to_numpy(writable=True)
        labels = featurizer.transform_labels(rows)
        names = [o.name for o in config.objectives]
        primary_index = np.array([names.index(c.primary) for c in config.canvases])
        firsts = rows.unique("_q", keep="first", maintain_order=True)
        ctx = featurizer.transform_context(firsts)
        context_of_row = rows["_q"].to_numpy(writable=True)
        row_task = ctx["task_type"][context_of_row]
        prim = labels[np.arange(len(labels)), primary_index[row_task]]
        primary = np.nan_to_num(prim, nan=0.0)
        counts = np.bincount(positions[primary == 1], minlength=catalogue.height).astype(np.float64)
        prob = (counts + 1e-3) / (counts.sum() + 1e-3 * len(counts))
        items = featurizer.transform_catalogue(catalogue)
        table_position = np.full(featurizer.vocab_sizes()["entity"], -1, dtype=np.int64)
        known = items.entity >= 2
        table_position[items.entity[known]] = np.flatnonzero(known)
        proposals = None
        if sources is not None:
            position_of = {e: i for i, e in enumerate(catalogue["entity_id"].to_list())}
            users = None
            if leave_own_out and "user_id" in firsts.columns:
                users = firsts["user_id"].cast(pl.String).to_list()
            proposals = sources.proposals(firsts["canvas"].to_list(), firsts.to_dicts(), position_of, users=users).to(
                device
            )
        return cls(
            ctx=context_tensors(ctx, device),
            context_of_row=torch.as_tensor(context_of_row, device=device),
            entity=torch.as_tensor(positions, device=device),
            labels=torch.as_tensor(labels, device=device),
            primary=torch.as_tensor(primary, device=device),
            items=item_tensors(items, device),
            log_prob=torch.as_tensor(np.log(prob), dtype=torch.float32, device=device),
            table_position=torch.as_tensor(table_position, device=device),
            primary_index=torch.as_tensor(primary_index, device=device),
            proposals=proposals,
        )

    def __len__(self) -> int:
        return len(self.entity)

    def batches(self, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
        """Row indices of one epoch: the requests in a random order, each with all its rows, cut into
        batches of ``batch_size`` rows (a request may straddle two)."""
        q = int(self.context_of_row[-1]) + 1 if len(self) else 0
        sizes = torch.bincount(self.context_of_row.cpu(), minlength=q)
        starts = torch.cumsum(sizes, 0) - sizes
        order = torch.randperm(q, generator=generator)
        lengths = sizes[order]
        first = starts[order].repeat_interleave(lengths)
        offset = torch.arange(int(lengths.sum())) - (torch.cumsum(lengths, 0) - lengths).repeat_interleave(lengths)
        return list((first + offset).to(self.entity.device).split(batch_size))


@dataclass
class Candidates:
    """The entities retrieval scores a step's queries against: the whole catalogue (``ids`` None) or a
    uniform sample (``ids`` (M,) catalogue positions); ``feats`` (C, F_i), ``emb`` (C, D)."""

    feats: torch.Tensor
    emb: torch.Tensor
    ids: torch.Tensor | None

    @property
    def full(self) -> bool:
        return self.ids is None


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
            self.weighting: torch.nn.Module = UncertaintyWeighting(n_obj + 2)
        else:
            weights = [t.objective_weights.get(o.name, 1.0) for o in config.objectives]
            self.weighting = FixedWeighting([*weights, t.retrieval_weight, t.sequence_weight])
        self.weighting.to(data.labels.device)
        tables = [p for n, p in model.named_parameters() if n.startswith("tables.") and n != "tables.text_missing"]
        table_ids = {id(p) for p in tables}
        dense = [p for p in model.parameters() if id(p) not in table_ids] + list(self.weighting.parameters())
        # learning rates per parameter group: the id tables learn at their own rate, without weight decay
        # (a decayed row would shrink on every step it is absent from)
        if model.tables.sparse:
            self.optimizers: list[torch.optim.Optimizer] = [
                torch.optim.SparseAdam(tables, lr=t.embedding_lr),
                torch.optim.AdamW(dense, lr=t.lr, weight_decay=t.weight_decay),
            ]
        else:
            groups = [
                {"params": tables, "lr": t.embedding_lr, "weight_decay": 0.0},
                {"params": dense, "lr": t.lr, "weight_decay": t.weight_decay},
            ]
            self.optimizers = [torch.optim.AdamW(groups)]
        self.temperature = t.temperature
        self.id_dropout = t.id_dropout
        self.id_fields = [f.name for f in config.fields if f.kind == "id"]
        self.random_negatives = t.random_negatives
        self.retrieval_negatives = t.retrieval_negatives
        self.retrieval_depth = config.evaluate.retrieval_depth
        self.task_names = [*(o.name for o in config.objectives), "retrieval", "next_entity"]
        self.n_items = len(data.items["entity"])
        self.full_softmax = self.n_items <= t.full_softmax_max
        histories = [f.name for f in model.context_encoder.fields if model.context_encoder.is_sequence(f)]
        self.history_field = histories[0] if histories and t.sequence_weight > 0 else None
        self.sequence_prefixes = t.sequence_prefixes
        tasks = [config.canvas_names.index(c) for c in t.sequence_canvases if c in config.canvas_names]
        self.sequence_tasks = torch.tensor(tasks, dtype=torch.long, device=data.labels.device)

    def _drop_ids(self, ctx: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Replaces a share of known context ids (index >= 2) with the unknown index (cold-start training)."""
        out = dict(ctx)
        for name in self.id_fields:
            ids = ctx[name]
            drop = torch.rand(ids.shape, generator=generator).to(ids.device) < self.id_dropout
            out[name] = torch.where(drop & (ids >= 2), torch.full_like(ids, UNKNOWN_INDEX), ids)
        return out

    def _softmax(
        self, query: torch.Tensor, target: torch.Tensor, candidates: Candidates, generator: torch.Generator
    ) -> torch.Tensor:
        """Retrieval cross-entropy of (P, D) queries against their (P,) target catalogue positions: over the
        whole catalogue (full softmax), else over in-batch targets and the sampled candidates (logQ)."""
        if candidates.full:
            return F.cross_entropy(query @ candidates.emb.T / self.temperature, target)
        ids = candidates.ids
        assert ids is not None
        _, target_emb = self.model.encode_items({k: v[target] for k, v in self.data.items.items()})
        return sampled_softmax_loss(
            query,
            target_emb,
            target,
            self.data.log_prob[target] + math.log(len(target)),
            candidates.emb,
            ids,
            math.log(len(ids) / self.n_items),
            self.temperature,
        )

    def _candidates(self, entity: torch.Tensor, generator: torch.Generator) -> Candidates:
        """What retrieval scores against in this step: the whole catalogue, or uniform samples."""
        if self.full_softmax:
            feats, emb = self.model.encode_items(self.data.items)
            return Candidates(feats, emb, None)
        ids = torch.randint(0, self.n_items, (self.random_negatives,), generator=generator).to(entity.device)
        feats, emb = self.model.encode_items({k: v[ids] for k, v in self.data.items.items()})
        return Candidates(feats, emb, ids)

    def _prefix_loss(
        self, ctx: dict[str, torch.Tensor], entity: torch.Tensor, candidates: Candidates, generator: torch.Generator
    ) -> torch.Tensor | None:
        """Every-prefix loss of rows with an entity history (positives): position ``t`` of the history
        predicts the entity at ``t + 1``, the last position the row's own entity. ``None``: no such row."""
        assert self.history_field is not None
        history = ctx[self.history_field]  # (P, L), left-aligned
        n = (history > 0).sum(dim=1)
        rows = n > 0
        if not bool(rows.any()):
            return None
        history, n, entity = history[rows], n[rows], entity[rows]
        row_ctx = {k: v[rows] for k, v in ctx.items()}
        length = history.shape[1]
        # targets in catalogue positions: the next history entity, and the row's entity after the last
        nxt = torch.cat([history[:, 1:], history.new_zeros(len(history), 1)], dim=1)
        targets = self.data.table_position[nxt]  # (P, L): -1 for padding / unknown ids
        at_end = torch.arange(length, device=history.device)[None, :] == (n - 1)[:, None]
        targets = torch.where(at_end, entity[:, None], targets)
        usable = (torch.arange(length, device=history.device)[None, :] < n[:, None]) & (targets >= 0)
        if self.sequence_prefixes > 0:  # a random subset of each row's prefixes (bounded softmax cost)
            noise = torch.rand(usable.shape, generator=generator).to(usable.device)
            keep = torch.topk(noise.masked_fill(~usable, -1.0), min(self.sequence_prefixes, length), dim=1).indices
            chosen = torch.zeros_like(usable).scatter_(1, keep, True)
            usable = usable & chosen
        if not bool(usable.any()):
            return None
        emb = self.model.context_encoder.every_prefix(row_ctx, self.history_field)  # (P, L, D)
        return self._softmax(emb[usable], targets[usable], candidates, generator)

    def _retrieval_negatives(
        self,
        scores: torch.Tensor,
        entity: torch.Tensor,
        request: torch.Tensor,
        candidates: Candidates,
        proposals: SourceProposals | None,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, C) retrieval scores of positive rows, their (P,) entities and requests -> (rows (P',),
        (P', k) catalogue positions): for the rows whose positive is among the candidates serving would
        rank (the retrieval's top ``depth`` or an offline source's proposals), entities drawn uniformly from
        those candidates (the positive excluded). That is what serving asks of the ranker.

        A row whose positive no source found is left out: its negatives would all score above it, and the
        ranker would learn "a high retrieval score means not relevant", inverting the retrieval.
        """
        ids = candidates.ids if candidates.ids is not None else torch.arange(scores.shape[1], device=scores.device)
        own = ids[None, :] == entity[:, None]  # (P, C)
        depth = min(self.retrieval_depth, scores.shape[1] - 1)
        others = scores.masked_fill(own, float("-inf"))
        top_scores, top = torch.topk(others, depth, dim=1)  # (P, depth)
        positive = scores.masked_fill(~own, float("-inf")).max(dim=1).values  # -inf: not among the candidates
        retrieved = positive >= top_scores[:, -1]
        if proposals is not None:
            retrieved |= (proposals.lookup(request, entity)[:, 1:] > 0).any(dim=1)
        rows = retrieved.nonzero().flatten()
        k = self.retrieval_negatives
        pick = torch.randint(0, depth, (len(rows), k), generator=generator)
        negatives = ids[torch.gather(top[rows], 1, pick.to(top.device))]
        if proposals is not None and len(rows):
            # each negative from the offline proposals with their share of the union (duplicates aside)
            _, count = proposals.bounds(request[rows])
            offline = proposals.sample(request[rows], k, generator)
            share = (count / (count + depth)).to(torch.float32)[:, None]
            use = (torch.rand(len(rows), k, generator=generator).to(share.device) < share) & (offline >= 0)
            use &= offline != entity[rows][:, None]
            negatives = torch.where(use, offline, negatives)
        return rows, negatives

    def losses(
        self, data: TrainingData, idx: torch.Tensor, generator: torch.Generator, *, training: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-task losses (O objectives, retrieval, every-prefix) of a batch, and which tasks were present.

        Returns:
            (losses (O + 2,), present (O + 2,) 0/1).
        """
        model = self.model
        # each distinct request of the batch is encoded once, then spread over its rows
        requests, row_request = torch.unique(data.context_of_row[idx], return_inverse=True)
        ctx = {k: v[requests] for k, v in data.ctx.items()}
        if training and self.id_dropout > 0:
            ctx = self._drop_ids(ctx, generator)
        entity = data.entity[idx]
        labels = data.labels[idx]
        request_f, request_e = model.encode_context(ctx)
        cf, ce = request_f[row_request], request_e[row_request]
        ctx = {k: v[row_request] for k, v in ctx.items()}
        task = ctx["task_type"]
        itf, ie = model.encode_items({k: v[entity] for k, v in data.items.items()})
        pos = data.primary[idx] == 1
        n_pos = int(pos.sum())
        zero = ce.new_zeros(())
        retrieval, prefix = zero, None
        of_request = requests[row_request]  # the data's request index of each row
        sources = data.proposals.lookup(of_request, entity) if data.proposals is not None else None
        rank_rows = (cf, ce, itf, ie, task, labels, sources)
        if n_pos >= 1:
            candidates = self._candidates(entity, generator)
            retrieval = self._softmax(ce[pos], entity[pos], candidates, generator)
            feed = pos & torch.isin(task, self.sequence_tasks)
            if self.history_field is not None and bool(feed.any()):
                prefix = self._prefix_loss({k: v[feed] for k, v in ctx.items()}, entity[feed], candidates, generator)
            if self.retrieval_negatives > 0:
                k = self.retrieval_negatives
                scores = ce[pos].detach() @ candidates.emb.detach().T  # (P, C)
                hit, neg = self._retrieval_negatives(
                    scores, entity[pos], of_request[pos], candidates, data.proposals, generator
                )
                flat = neg.reshape(-1)  # (P' * k,)
                nf, ne = model.encode_items({key: v[flat] for key, v in data.items.items()})
                of = pos.nonzero().flatten()[hit].repeat_interleave(k)  # the batch row of each negative
                neg_task = task[of]
                neg_labels = torch.full((len(flat), labels.shape[1]), float("nan"), device=labels.device)
                neg_labels[torch.arange(len(flat), device=labels.device), data.primary_index[neg_task]] = 0.0
                neg_sources = None
                if sources is not None and data.proposals is not None:
                    neg_sources = torch.cat([sources, data.proposals.lookup(of_request[of], flat)])
                rank_rows = (
                    torch.cat([cf, cf[of]]),
                    torch.cat([ce, ce[of]]),
                    torch.cat([itf, nf]),
                    torch.cat([ie, ne]),
                    torch.cat([task, neg_task]),
                    torch.cat([labels, neg_labels]),
                    neg_sources,
                )
        rcf, rce, ritf, rie, rtask, rlabels, rsources = rank_rows
        logits = model.rank(rcf, rce, ritf, rie, rtask, rsources)
        obj_losses, counts = masked_objective_losses(logits, rlabels, self.binary)
        flags = torch.tensor([n_pos >= 1, prefix is not None], device=counts.device)
        present = torch.cat([counts > 0, flags]).float()
        return torch.cat([obj_losses, retrieval[None], (prefix if prefix is not None else zero)[None]]), present

    def step(self, idx: torch.Tensor) -> dict[str, Any]:
        """One optimisation step on the training rows ``idx``."""
        self.model.train()
        losses, present = self.losses(self.data, idx, self.generator, training=True)
        total = self.weighting(losses, present)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        total.backward()
        for opt in self.optimizers:
            opt.step()
        values = losses.detach().cpu().tolist()
        tasks = {n: v for n, v, on in zip(self.task_names, values, present.tolist(), strict=True) if on}
        return {"loss": float(total.detach()), "retrieval": values[-2], "tasks": tasks}

    @torch.no_grad()
    def validation_losses(self, data: TrainingData, batch_size: int, seed: int) -> dict[str, float]:
        """Each task's loss (objectives, "retrieval", "next_entity") averaged over the validation batches
        that have it (seeded negatives); a task no batch has is left out."""
        self.model.eval()
        generator = torch.Generator().manual_seed(seed)
        sums = torch.zeros(len(self.task_names))
        weights = torch.zeros(len(self.task_names))
        for idx in torch.arange(len(data), device=data.entity.device).split(batch_size):
            losses, present = self.losses(data, idx, generator)
            sums += (losses * present).cpu()
            weights += present.cpu()
        return {n: float(s / w) for n, s, w in zip(self.task_names, sums, weights, strict=True) if w > 0}

    def validation_loss(self, data: TrainingData, batch_size: int, seed: int) -> float:
        """Unweighted sum of :meth:`validation_losses` (``inf`` without validation rows)."""
        return sum(self.validation_losses(data, batch_size, seed).values()) if len(data) else float("inf")

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "weighting": self.weighting.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.weighting.load_state_dict(state["weighting"])
        for opt, saved in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(saved)


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
    threads = training_threads(config.train.threads)
    with reproducible(threads):  # the same seed gives the same model on a busy machine too
        bundle = _train(config, prepared, canvases, checkpoint_dir, progress, device)
    bundle.meta["threads"] = threads
    return bundle


def _train(
    config: ProjectConfig,
    prepared: PreparedData,
    canvases: tuple[str, ...] | None,
    checkpoint_dir: str | Path | None,
    progress: bool,
    device: str | None,
) -> ModelBundle:
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
    kwargs["sparse_tables"] = prepared.catalogue.height > t.full_softmax_max  # see monorec.models.towers
    model = build_model(kwargs).to(dev)
    rows = prepared.merged(names)
    if t.max_train_rows and rows.height > t.max_train_rows:
        rows = rows.head(t.max_train_rows)
    # the candidate sources of the version being trained, fitted on the training period: built once, they
    # give the training rows their source inputs and every validation its candidates
    responses = prepared.responses("train")
    popular = PopularLists.fit(responses, cfg, catalogue=prepared.catalogue)
    cooccurrence = fit_cooccurrence(cfg, responses, keep_own=True)
    sources = CandidateSources(cfg, index_catalogue(prepared.catalogue), cooccurrence, popular)
    # the training rows' proposals: what the ranker reads as source inputs, and where its negatives come from
    row_sources = sources if model.source_columns or t.retrieval_negatives > 0 else None
    data = TrainingData.build(cfg, featurizer, rows, prepared.catalogue, dev, sources=row_sources, leave_own_out=True)
    generator = torch.Generator().manual_seed(t.seed)
    stepper = TrainStep(model, cfg, data, generator)
    val_requests = request_sets(cfg, prepared, "valid", max_requests=t.val_requests) if t.selection == "ndcg" else {}
    val_data = None
    if t.selection == "loss":
        val_rows = prepared.rows("valid", names)
        val_data = TrainingData.build(cfg, featurizer, val_rows, prepared.catalogue, dev, sources=row_sources)
    bundle = ModelBundle(cfg, featurizer, model, kwargs, popular=popular, cooccurrence=cooccurrence)

    history: list[dict[str, Any]] = []
    best_score, best_state, best_epoch, start_epoch = float("-inf"), copy.deepcopy(model.state_dict()), -1, 0
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, map_location=dev, weights_only=True)  # tensors and plain containers only
        stepper.load_state_dict(saved["stepper"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])  # dropout draws from the global generator
        history, best_score, best_epoch = saved["history"], saved["best_score"], saved["best_epoch"]
        best_state, start_epoch = saved["best_model"], saved["epoch"] + 1
    stale = len(history) - (best_epoch + 1)  # epochs since the best (0 on a fresh start)
    for epoch in range(start_epoch, t.epochs):
        if stale >= t.patience:
            break
        started = time.perf_counter()
        batches = data.batches(t.batch_size, generator)
        bar = tqdm(
            batches,
            desc=f"epoch {epoch + 1}/{t.epochs} [{'+'.join(names)}]",
            disable=None if progress else True,
            leave=False,
        )
        losses = []
        task_losses: dict[str, list[float]] = {n: [] for n in stepper.task_names}
        for idx in bar:
            stats = stepper.step(idx)
            losses.append(stats["loss"])
            for n, v in stats["tasks"].items():
                task_losses[n].append(v)
            bar.set_postfix(loss=f"{stats['loss']:.3f}")
        elapsed = time.perf_counter() - started
        val: dict[str, Any] = {}
        val_losses: dict[str, float] = {}
        if val_data is not None:
            val_losses = stepper.validation_losses(val_data, t.batch_size, t.seed)
            score = -sum(val_losses.values()) if val_losses else float("-inf")  # higher is better
        else:
            depth = cfg.evaluate.retrieval_depth
            recommender = ModelRecommender(bundle, prepared.catalogue, depth=depth, sources=sources)
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
                # learning curves: each task's mean training loss this epoch, and its validation loss
                "train_losses": {n: float(np.mean(v)) for n, v in task_losses.items() if v},
                "val_losses": val_losses,
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
                    "torch_rng": torch.get_rng_state(),
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
    # the ranking score's weight of the retrieval order, per canvas, chosen on validation requests
    fusion_requests = val_requests or request_sets(cfg, prepared, "valid", max_requests=t.val_requests)
    recommender = ModelRecommender(bundle, prepared.catalogue, depth=cfg.evaluate.retrieval_depth, sources=sources)
    fusion = tune_source_weights(bundle, recommender, fusion_requests, cfg.evaluate.k)
    bundle.meta = {
        "canvases": list(names),
        "best_epoch": best_epoch,
        "best_val_score": best_score,
        "selection": t.selection,
        "history": history,
        "source_weights": fusion,
        "device": str(dev),
        "train_rows": len(data),
        "mixture": prepared.manifest.get("mixture", {}),
        "torch": torch.__version__,
    }
    sources.close()
    cooccurrence.own = None  # the training rows' leave-one-user-out counts: not part of the version
    return bundle
