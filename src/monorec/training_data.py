"""The training rows as tensors: each request's context stored once, its rows contiguous, and what the
candidate sources propose for it (see :class:`TrainingData`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from monorec.bundle import context_tensors, item_tensors
from monorec.config import ProjectConfig
from monorec.data.features import Featurizer
from monorec.data.labels import responses
from monorec.data.weights import RETRIEVAL, weight_column, weighted_tasks
from monorec.errors import DataError
from monorec.evaluation.requests import entity_positions
from monorec.retrieval.proposals import SourceProposals
from monorec.retrieval.sources import CandidateSources

__all__ = ["TrainingData", "TrainingShards"]


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
    # (N, O + 1) per-sample loss weights: each objective's, then retrieval's (monorec.data.weights)
    weights: torch.Tensor | None = None
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
        response_counts: np.ndarray | None = None,
    ) -> TrainingData:
        """``sources``: propose for every request (``leave_own_out``: training rows, whose users' responses
        the co-occurrence table counted). ``response_counts`` (N_items,): the responses per catalogue entity
        that ``log_prob`` estimates the in-batch sampling from (default: counted in ``rows``; a shard of the
        training rows is given the counts of all of them)."""
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
        weights = sample_weights(config, rows)
        names = [o.name for o in config.objectives]
        primary_index = np.array([names.index(c.primary) for c in config.canvases])
        firsts = rows.unique("_q", keep="first", maintain_order=True)
        ctx = featurizer.transform_context(firsts)
        context_of_row = rows["_q"].to_numpy(writable=True)
        row_task = ctx["task_type"][context_of_row]
        prim = labels[np.arange(len(labels)), primary_index[row_task]]
        primary = np.nan_to_num(prim, nan=0.0)
        counts = response_counts
        if counts is None:
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
            weights=None if weights is None else torch.as_tensor(weights, device=device),
            proposals=proposals,
        )

    def without_weights(self) -> TrainingData:
        """The same rows, every sample weighing 1 (validation measures the plain objectives)."""
        return dataclasses.replace(self, weights=None)

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


def sample_weights(config: ProjectConfig, rows: pl.DataFrame) -> np.ndarray | None:
    """(N, O + 1) float32 loss weights of ``rows`` (each objective's, then retrieval's), read from the
    prepared weight columns; None when the config weights nothing (every row weighs 1).

    Raises:
        DataError: the config weights a task the rows carry no weight column for (prepared with another
            config: prepare again).
    """
    weighted = weighted_tasks(config)
    if not weighted:
        return None
    missing = [weight_column(t) for t in weighted if weight_column(t) not in rows.columns]
    if missing:
        raise DataError("prepared data", f"no columns {missing} for the declared weights: run prepare with this config")
    tasks = [*(o.name for o in config.objectives), RETRIEVAL]
    columns = [
        rows[weight_column(t)].cast(pl.Float64).fill_null(1.0).to_numpy() if t in weighted else np.ones(rows.height)
        for t in tasks
    ]
    return np.stack(columns, axis=1).astype(np.float32)


class TrainingShards:
    """The training rows of every epoch, read ``shard_rows`` at a time from a lazy frame (a Parquet scan
    of the merged rows when the prepared data is opened, not loaded): what lets training read more rows
    than memory holds. The merge ordered the rows by a seeded hash of their request, so a shard is a
    random sample of whole requests; an epoch visits the shards in a fresh seeded order.

    Args:
        rows: the merged training rows (the first ``max_rows`` are used when ``max_rows`` > 0).
        shard_rows: rows per shard (0: one shard of every row).
    """

    def __init__(self, rows: pl.LazyFrame, shard_rows: int = 0, max_rows: int = 0) -> None:
        total = int(rows.select(pl.len()).collect(engine="streaming").item())
        self.rows_total = min(total, max_rows) if max_rows else total
        self.rows = rows.head(self.rows_total)
        self.shard_rows = max(1, shard_rows or self.rows_total)
        self.count = max(1, -(-self.rows_total // self.shard_rows))

    def __len__(self) -> int:
        return self.rows_total

    def order(self, epoch: int, seed: int) -> list[int]:
        """The shards' order in ``epoch``: seeded by (seed, epoch), so that a resumed run visits the same."""
        if self.count == 1:
            return [0]
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(self.count, generator=generator).tolist()

    def read(self, shard: int) -> pl.DataFrame:
        return self.rows.slice(shard * self.shard_rows, self.shard_rows).collect()

    def response_counts(self, config: ProjectConfig, catalogue: pl.DataFrame) -> np.ndarray:
        """(N_items,) float64 responses per catalogue entity over every shard (one streaming pass)."""
        counts = responses(self.rows, config).group_by("entity_id").len().collect(engine="streaming")
        positions = entity_positions(catalogue, counts["entity_id"])
        known = positions >= 0
        out = np.zeros(catalogue.height, dtype=np.float64)
        np.add.at(out, positions[known], counts["len"].to_numpy()[known])
        return out
