"""Data-parallel training: several workers run the same training loop, each on its shard of every batch,
and average their gradients before each optimiser step (``torch.distributed``; the process group is set up
by whoever starts the workers, e.g. Ray Train: :mod:`monorec.distributed.train_on_ray`).

Every worker draws the same epoch order from the same seed, so the shards of a batch partition exactly the
rows one process would train on; averaged gradients then make every worker take the same step, and the
workers' models stay identical without being broadcast. Validation, model selection, checkpoints and the
returned bundle are the lead worker's (rank 0); its decision to stop is sent to the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from monorec.errors import ConfigError

__all__ = ["DataParallel"]


@dataclass(frozen=True)
class DataParallel:
    """This worker's place among ``world`` workers (rank 0 leads); ``DataParallel()`` is one process."""

    rank: int = 0
    world: int = 1

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def shard(self, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """This worker's contiguous share of each batch of row indices (rows of a request stay together
        where they can); a batch smaller than the world is skipped by every worker alike."""
        if self.world == 1:
            return list(batches)
        return [b.tensor_split(self.world)[self.rank] for b in batches if len(b) >= self.world]

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replaces every gradient by its mean over the workers (in one all-reduce). A parameter without a
        gradient on some workers counts as zero there; one without a gradient anywhere keeps none, so that
        the optimiser leaves it alone as one process would.

        Raises:
            ConfigError: a sparse gradient (id tables above ``train.full_softmax_max``).
        """
        if self.world == 1:
            return
        import torch.distributed as dist

        if any(p.grad is not None and p.grad.is_sparse for p in params):
            raise ConfigError(
                "train.full_softmax_max", ["data-parallel training needs dense id tables: raise full_softmax_max"]
            )
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
        dist.all_reduce(has)
        used = [p for p, h in zip(params, has.tolist(), strict=True) if h > 0]
        if not used:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in used])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in used:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def share(self, value: float) -> float:
        """The lead worker's ``value`` on every worker (e.g. its validation score)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = torch.tensor([value if self.lead else 0.0], dtype=torch.float64)
        dist.broadcast(box, src=0)
        return float(box.item())
