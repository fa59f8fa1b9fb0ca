"""Data-parallel training's arithmetic, on two real processes joined by torch.distributed (gloo): the
shards partition every batch, and averaged gradients are the full batch's gradient, so the workers' models
stay the one model a single process would train."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from monorec.data_parallel import DataParallel


def test_the_shards_of_every_batch_partition_it() -> None:
    batches = [torch.arange(10), torch.arange(10, 17), torch.arange(17, 18)]
    shards = [DataParallel(rank, 2).shard(batches) for rank in (0, 1)]
    assert [len(s) for s in shards] == [2, 2], "a batch smaller than the world is skipped by every worker"
    for i in range(2):
        assert torch.equal(torch.cat([shards[0][i], shards[1][i]]), batches[i])
    assert DataParallel().shard(batches) == batches


def _worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        unused = torch.nn.Parameter(torch.ones(2))  # no gradient on any worker: must stay without one
        only_lead = torch.nn.Parameter(torch.zeros(2))  # a gradient on the lead only: zero elsewhere
        x = torch.arange(24, dtype=torch.float32).reshape(8, 3) / 10
        y = x.sum(dim=1, keepdim=True)
        shard = DataParallel(rank, world).shard([torch.arange(8)])[0]
        loss = ((model(x[shard]) - y[shard]) ** 2).mean()
        if rank == 0:
            loss = loss + only_lead.sum()
        loss.backward()
        params = [*model.parameters(), unused, only_lead]
        DataParallel(rank, world).average_gradients(params)
        if rank == 0:
            torch.save(
                {
                    "weight": model.weight.grad,
                    "bias": model.bias.grad,
                    "unused": unused.grad,
                    "only_lead": only_lead.grad,
                },
                out,
            )
    finally:
        dist.destroy_process_group()


def test_averaged_gradients_are_the_full_batch_gradient(tmp_path: Path) -> None:
    out = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2, join=True)
    grads = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)  # the same initial model, the whole batch in one process
    x = torch.arange(24, dtype=torch.float32).reshape(8, 3) / 10
    ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean().backward()
    torch.testing.assert_close(grads["weight"], model.weight.grad)
    torch.testing.assert_close(grads["bias"], model.bias.grad)
    assert grads["unused"] is None
    torch.testing.assert_close(grads["only_lead"], torch.full((2,), 0.5))  # (1 + 0) / 2 workers
