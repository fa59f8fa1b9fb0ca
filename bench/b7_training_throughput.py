"""B7: training throughput of monorec's trainer vs a bare PyTorch loop of the identical architecture.

Both train the same MonorecModel on the same tensors (the synthetic world's merged training set) with the
same work per step: each request's context encoded once (the sequence encoder over its history), masked
objective losses on the logged rows plus negatives drawn from the retrieval softmax, the full-softmax
retrieval loss over the catalogue, the every-prefix loss of home histories, and the same optimizer (AdamW,
the tables in their own group). The bare loop is written plainly here, with no loss weighting, progress
bar, checks or bookkeeping: what our trainer adds costs the ratio.

On Ray Train (``--ray-workers N``): the whole training loop (``monorec.train.train``, validation excluded
from the timing) in one process with every core, and on N data-parallel Ray Train workers of a local
cluster, one core each, on the same prepared data and config: samples/s of the best epoch of each, and
Ray's start-up apart.

On a GPU (``--device cuda``): both loops with the rows and the model on the device, the same seeded
draws made on the CPU and moved there (as the trainer makes them), each timing ended by a device sync.

    python bench/b7_training_throughput.py --out b7.json [--ray-workers 2] [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import scratch_dir, write_record
from monorec.config import load_config
from monorec.data.features import Featurizer
from monorec.data.prepared import prepare
from monorec.data.world import WorldSpec, generate_world
from monorec.devices import resolve_device
from monorec.models.model import build_model, model_kwargs
from monorec.pipeline import default_config
from monorec.train_step import TrainStep
from monorec.training_data import TrainingData


def bare_loop(model, data, config, epochs: int, seed: int) -> float:
    """The same work as TrainStep, written inline. Returns samples/s."""
    t = config.train
    dev = data.labels.device
    tables = [p for n, p in model.named_parameters() if n.startswith("tables.") and n != "tables.text_missing"]
    ids = {id(p) for p in tables}
    opt = torch.optim.AdamW(
        [
            {"params": tables, "lr": t.embedding_lr, "weight_decay": 0.0},
            {"params": [p for p in model.parameters() if id(p) not in ids], "lr": t.lr},
        ]
    )
    binary = model.objective_is_binary
    gen = torch.Generator().manual_seed(seed)
    home = config.canvas_names.index("home")
    k = t.retrieval_negatives
    model.train()
    _sync(dev)
    started = time.perf_counter()
    for _ in range(epochs):
        for idx in data.batches(t.batch_size, gen):
            requests, inverse = torch.unique(data.context_of_row[idx], return_inverse=True)
            rctx = {key: v[requests] for key, v in data.ctx.items()}
            rf, re_ = model.encode_context(rctx)
            cf, ce = rf[inverse], re_[inverse]
            ctx = {key: v[inverse] for key, v in rctx.items()}
            task = ctx["task_type"]
            ent = data.entity[idx]
            pos = data.primary[idx] == 1
            all_f, all_e = model.encode_items(data.items)
            q = ce[pos]
            loss = F.cross_entropy(q @ all_e.T / t.temperature, ent[pos])
            # ranker negatives drawn from the retrieval's softmax (when the config asks for them)
            neg = torch.zeros(0, dtype=torch.long, device=dev)
            if k > 0:
                scores = (q.detach() @ all_e.detach().T / t.temperature).scatter(1, ent[pos][:, None], float("-inf"))
                probs = torch.softmax(scores, 1).cpu()  # the CPU generator's draw, as reproducible as the trainer's
                neg = torch.multinomial(probs, k, replacement=True, generator=gen).reshape(-1).to(dev)
            neg_task = task[pos].repeat_interleave(k)
            y_neg = torch.full((len(neg), data.labels.shape[1]), float("nan"), device=dev)
            y_neg[torch.arange(len(neg), device=dev), data.primary_index[neg_task]] = 0.0
            logits = model.rank(
                torch.cat([cf, cf[pos].repeat_interleave(k, 0)]),
                torch.cat([ce, q.repeat_interleave(k, 0)]),
                torch.cat([all_f[ent], all_f[neg]]),
                torch.cat([all_e[ent], all_e[neg]]),
                torch.cat([task, neg_task]),
            )
            y = torch.cat([data.labels[idx], y_neg])
            mask = ~torch.isnan(y)
            y0 = torch.nan_to_num(y)
            per = torch.where(
                binary, F.binary_cross_entropy_with_logits(logits, y0, reduction="none"), (logits - y0) ** 2
            )
            loss = loss + ((per * mask).sum(0) / mask.sum(0).clamp(min=1)).sum()
            # every prefix of the home histories predicts the next entity (4 random prefixes per row)
            feed = pos & (task == home) & (ctx["history"] > 0).any(1)
            if feed.any():
                h = ctx["history"][feed]
                n = (h > 0).sum(1)
                nxt = data.table_position[torch.cat([h[:, 1:], torch.zeros_like(h[:, :1])], 1)]
                last = torch.arange(h.shape[1], device=dev)[None] == (n - 1)[:, None]
                target = torch.where(last, ent[feed][:, None], nxt)
                ok = (torch.arange(h.shape[1], device=dev)[None] < n[:, None]) & (target >= 0)
                noise = torch.rand(ok.shape, generator=gen).to(dev).masked_fill(~ok, -1.0)
                pick = torch.zeros_like(ok).scatter_(1, noise.topk(min(4, h.shape[1]), 1).indices, True) & ok
                emb = model.context_encoder.every_prefix({key: v[feed] for key, v in ctx.items()}, "history")
                loss = loss + F.cross_entropy(emb[pick] @ all_e.T / t.temperature, target[pick])
            opt.zero_grad()
            loss.backward()
            opt.step()
    _sync(dev)
    return len(data) * epochs / (time.perf_counter() - started)


def ours(model, config, data, epochs: int, seed: int) -> float:
    """monorec's training step loop (what ``monorec.train.train`` runs each epoch). Returns samples/s."""
    gen = torch.Generator().manual_seed(seed)
    step = TrainStep(model, config, data, gen)
    _sync(data.labels.device)
    started = time.perf_counter()
    for _ in range(epochs):
        for idx in data.batches(config.train.batch_size, gen):
            step.step(idx)
    _sync(data.labels.device)
    return len(data) * epochs / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    """Waits for the device's queued work (a GPU's kernels run after the Python that launched them)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="b7.json")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ray-workers", type=int, default=0, help="also train on Ray Train with this many workers")
    p.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto: where both loops train")
    args = p.parse_args()
    device = resolve_device(args.device)
    config = load_config(default_config("synthetic"))
    spec = WorldSpec(n_users=150, n_items=200, n_requests=1500) if args.quick else WorldSpec()
    epochs, repeats = (1, 1) if args.quick else (args.epochs, args.repeats)
    catalogue, logs = generate_world(spec)
    prepared = prepare(config, catalogue, logs)
    fz = Featurizer(config).fit(prepared.rows("train"), prepared.catalogue)
    data = TrainingData.build(config, fz, prepared.merged(config.canvas_names), prepared.catalogue, device)
    kwargs = {**model_kwargs(config, fz), "sparse_tables": False}  # as train() builds it (full softmax)
    runs = {"ours": [], "bare": []}
    for r in range(repeats):  # interleaved, so that machine noise hits both alike
        torch.manual_seed(args.seed + r)
        runs["bare"].append(bare_loop(build_model(kwargs).to(device), data, config, epochs, args.seed + r))
        torch.manual_seed(args.seed + r)
        runs["ours"].append(ours(build_model(kwargs).to(device), config, data, epochs, args.seed + r))
    best = {k: max(v) for k, v in runs.items()}
    ratio = best["ours"] / best["bare"]
    print(f"samples/s: ours {best['ours']:.0f}  bare {best['bare']:.0f}  ratio {ratio:.3f} (target >= 0.8)")
    on_ray = train_on_ray_vs_one_process(config, prepared, epochs, args.ray_workers) if args.ray_workers else {}
    write_record(
        args.out,
        {
            "benchmark": "B7",
            "quick": args.quick,
            "device": str(device),
            "rows": len(data),
            "epochs": epochs,
            "repeats": repeats,
            "batch_size": config.train.batch_size,
            "samples_per_s": runs,
            "best": best,
            "ratio": ratio,
            "config": dataclasses.asdict(config.model),
            **on_ray,
        },
    )


def train_on_ray_vs_one_process(config, prepared, epochs: int, workers: int) -> dict:  # type: ignore[no-untyped-def]
    """The training loop in one process, then on ``workers`` Ray Train workers: best epoch's samples/s."""

    from monorec.distributed import ray_session, train_on_ray
    from monorec.train import train

    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs, patience=epochs))
    one = train(config, prepared, progress=False)
    folder = prepared.save(scratch_dir() / "prepared")
    started = time.perf_counter()
    with ray_session("auto", cpus=workers):
        startup_s = time.perf_counter() - started
        started = time.perf_counter()
        bundle = train_on_ray(config, folder, workers=workers)
        ray_s = time.perf_counter() - started
    best_one = max(h["samples_per_s"] for h in one.meta["history"])
    best_ray = max(h["samples_per_s"] for h in bundle.meta["history"])
    print(
        f"training loop: one process {best_one:.0f} samples/s; {workers} Ray Train workers {best_ray:.0f} "
        f"samples/s ({best_ray / best_one:.2f}x); Ray start-up {startup_s:.1f} s, the Ray run {ray_s:.1f} s"
    )
    return {
        "ray_workers": workers,
        "one_process_samples_per_s": best_one,
        "ray_samples_per_s": best_ray,
        "ray_vs_one_process": best_ray / best_one,
        "ray_startup_seconds": startup_s,
        "ray_run_seconds": ray_s,
    }


if __name__ == "__main__":
    main()
