"""One optimisation step of the multi-task model: the ranker's masked objective losses (logged rows, plus
negatives drawn from what serving presents), the retrieval softmax (full, or sampled with logQ
correction), the every-prefix loss of entity histories, combined by fixed or learned uncertainty weights.
See :class:`TrainStep`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from monorec.config import ProjectConfig
from monorec.data.features import UNKNOWN_INDEX
from monorec.data_parallel import DataParallel
from monorec.models.losses import (
    FixedWeighting,
    UncertaintyWeighting,
    masked_objective_losses,
    sampled_softmax_loss,
    weighted_mean,
)
from monorec.models.model import MonorecModel
from monorec.retrieval.proposals import SourceProposals
from monorec.training_data import TrainingData

__all__ = ["Candidates", "TrainStep"]


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
        self,
        model: MonorecModel,
        config: ProjectConfig,
        data: TrainingData,
        generator: torch.Generator,
        parallel: DataParallel | None = None,
    ) -> None:
        self.model, self.data, self.generator = model, data, generator
        self.parallel = parallel or DataParallel()  # one process, or this worker's place among several
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
        self._params = [p for opt in self.optimizers for g in opt.param_groups for p in g["params"]]  # synced
        self.temperature = t.temperature
        self.id_dropout = t.id_dropout
        self.id_fields = [f.name for f in config.fields if f.kind == "id"]
        self.random_negatives = t.random_negatives
        self.hard_negatives, self.hard_negative_pool = t.hard_negatives, t.hard_negative_pool
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
        self,
        query: torch.Tensor,
        target: torch.Tensor,
        candidates: Candidates,
        generator: torch.Generator,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Retrieval cross-entropy of (P, D) queries against their (P,) target catalogue positions: over the
        whole catalogue (full softmax), else over in-batch targets and the sampled candidates (logQ);
        weighted by (P,) ``weights`` when given."""
        if candidates.full:
            logits = query @ candidates.emb.T / self.temperature
            return weighted_mean(F.cross_entropy(logits, target, reduction="none"), weights)
        ids = candidates.ids
        assert ids is not None
        _, target_emb = self.model.encode_items({k: v[target] for k, v in self.data.items.items()})
        hard, hard_ids = self._hard_negatives(query, target, generator) if self.hard_negatives > 0 else (None, None)
        return sampled_softmax_loss(
            query,
            target_emb,
            target,
            self.data.log_prob[target] + math.log(len(target)),
            candidates.emb,
            ids,
            math.log(len(ids) / self.n_items),
            self.temperature,
            weights,
            hard,
            hard_ids,
            math.log(min(1.0, self.hard_negative_pool / self.n_items)),
        )

    def _hard_negatives(
        self, query: torch.Tensor, target: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard negatives from the retrieval itself: for (P, D) queries and their (P,) targets, the current
        towers' top ``hard_negatives`` entities among a uniform pool (scored without gradients; the target
        never chosen), then embedded with gradients. Returns ((P, H, D) embeddings, (P, H) catalogue ids).

        The pool keeps the mining affordable above ``full_softmax_max``, where scoring the whole catalogue
        every step is what the sampled softmax avoids.
        """
        pool = torch.randint(0, self.n_items, (self.hard_negative_pool,), generator=generator).to(query.device)
        with torch.no_grad():
            _, pool_emb = self.model.encode_items({k: v[pool] for k, v in self.data.items.items()})
            scores = (query @ pool_emb.T).masked_fill(pool[None, :] == target[:, None], float("-inf"))
        h = min(self.hard_negatives, len(pool))
        chosen = pool[torch.topk(scores, h, dim=1).indices]  # (P, H)
        unique, where = torch.unique(chosen, return_inverse=True)
        _, emb = self.model.encode_items({k: v[unique] for k, v in self.data.items.items()})
        return emb[where], chosen

    def _candidates(self, entity: torch.Tensor, generator: torch.Generator) -> Candidates:
        """What retrieval scores against in this step: the whole catalogue, or uniform samples."""
        if self.full_softmax:
            feats, emb = self.model.encode_items(self.data.items)
            return Candidates(feats, emb, None)
        ids = torch.randint(0, self.n_items, (self.random_negatives,), generator=generator).to(entity.device)
        feats, emb = self.model.encode_items({k: v[ids] for k, v in self.data.items.items()})
        return Candidates(feats, emb, ids)

    def _prefix_loss(
        self,
        ctx: dict[str, torch.Tensor],
        entity: torch.Tensor,
        candidates: Candidates,
        generator: torch.Generator,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Every-prefix loss of rows with an entity history (positives): position ``t`` of the history
        predicts the entity at ``t + 1``, the last position the row's own entity; each prefix weighs its
        row's (P,) retrieval ``weights`` when given. ``None``: no such row."""
        assert self.history_field is not None
        history = ctx[self.history_field]  # (P, L), left-aligned
        n = (history > 0).sum(dim=1)
        rows = n > 0
        if not bool(rows.any()):
            return None
        history, n, entity = history[rows], n[rows], entity[rows]
        weights = weights[rows] if weights is not None else None
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
        prefix_weights = weights[:, None].expand(usable.shape)[usable] if weights is not None else None
        return self._softmax(emb[usable], targets[usable], candidates, generator, prefix_weights)

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
        # (B, O) objective weights and (B,) retrieval weights of the rows (None: every row weighs 1)
        weights = data.weights[idx] if data.weights is not None else None
        obj_w = weights[:, :-1] if weights is not None else None
        ret_w = weights[:, -1] if weights is not None else None
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
        rank_rows = (cf, ce, itf, ie, task, labels, sources, obj_w)
        if n_pos >= 1:
            candidates = self._candidates(entity, generator)
            retrieval = self._softmax(ce[pos], entity[pos], candidates, generator, _rows(ret_w, pos))
            feed = pos & torch.isin(task, self.sequence_tasks)
            if self.history_field is not None and bool(feed.any()):
                feed_ctx = {k: v[feed] for k, v in ctx.items()}
                prefix = self._prefix_loss(feed_ctx, entity[feed], candidates, generator, _rows(ret_w, feed))
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
                    torch.cat([obj_w, obj_w[of]]) if obj_w is not None else None,  # a negative weighs as its row
                )
        rcf, rce, ritf, rie, rtask, rlabels, rsources, rweights = rank_rows
        logits = model.rank(rcf, rce, ritf, rie, rtask, rsources)
        obj_losses, counts = masked_objective_losses(logits, rlabels, self.binary, rweights)
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
        self.parallel.average_gradients(self._params)
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


def _rows(weights: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    """The selected rows' weights (None stays None)."""
    return weights[rows] if weights is not None else None
