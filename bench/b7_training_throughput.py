"""B7: training throughput of monorec's trainer vs a bare PyTorch loop of the identical architecture.

Both train the same MonorecModel on the same tensors (the synthetic world's merged training set), with
the same losses (masked objectives + sampled softmax with in-batch and uniform negatives) and the same
optimizers (SparseAdam for tables, AdamW for the rest). The bare loop is written plainly here, with no
loss weighting, progress bar, logQ correction or bookkeeping: what our trainer adds costs the ratio.

    python bench/b7_training_throughput.py --out b7.json [--quick]
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
from _common import write_record
from monorec.config import load_config
from monorec.data.features import Featurizer
from monorec.data.prepared import prepare
from monorec.data.world import WorldSpec, generate_world
from monorec.models.model import build_model, model_kwargs
from monorec.pipeline import default_config
from monorec.train import TrainingData, TrainStep


def bare_loop(model, data, batch_size: int, epochs: int, negatives: int, seed: int) -> float:
    """The same work as TrainStep, written inline. Returns samples/s."""
    sparse = [p for n, p in model.named_parameters() if n.startswith("tables.") and n != "tables.text_missing"]
    ids = {id(p) for p in sparse}
    sparse_opt = torch.optim.SparseAdam(sparse, lr=1e-2)
    dense_opt = torch.optim.AdamW([p for p in model.parameters() if id(p) not in ids], lr=3e-3)
    binary = model.objective_is_binary
    gen = torch.Generator().manual_seed(seed)
    n_items = len(data.items["entity"])
    model.train()
    started = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(data), generator=gen).split(batch_size):
            ctx = {k: v[idx] for k, v in data.ctx.items()}
            ent = data.entity[idx]
            cf, ce = model.encode_context(ctx)
            itf, ie = model.encode_items({k: v[ent] for k, v in data.items.items()})
            logits = model.rank(cf, ce, itf, ie, ctx["task_type"])
            y = data.labels[idx]
            mask = ~torch.isnan(y)
            y0 = torch.nan_to_num(y)
            per = torch.where(
                binary, F.binary_cross_entropy_with_logits(logits, y0, reduction="none"), (logits - y0) ** 2
            )
            loss = ((per * mask).sum(0) / mask.sum(0).clamp(min=1)).sum()
            pos = data.primary[idx] == 1
            neg = torch.randint(0, n_items, (negatives,), generator=gen)
            _, ne = model.encode_items({k: v[neg] for k, v in data.items.items()})
            q, v = ce[pos], ie[pos]
            scores = torch.cat([q @ v.T, q @ ne.T], dim=1) / 0.05
            loss = loss + F.cross_entropy(scores, torch.arange(len(q)))
            sparse_opt.zero_grad()
            dense_opt.zero_grad()
            loss.backward()
            sparse_opt.step()
            dense_opt.step()
    return len(data) * epochs / (time.perf_counter() - started)


def ours(model, config, data, epochs: int, seed: int) -> float:
    """monorec's training step loop (what ``monorec.train.train`` runs each epoch). Returns samples/s."""
    gen = torch.Generator().manual_seed(seed)
    step = TrainStep(model, config, data, gen)
    started = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(data), generator=gen).split(config.train.batch_size):
            step.step(idx)
    return len(data) * epochs / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="b7.json")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    config = load_config(default_config("synthetic"))
    spec = WorldSpec(n_users=150, n_items=200, n_requests=1500) if args.quick else WorldSpec()
    epochs, repeats = (1, 1) if args.quick else (args.epochs, args.repeats)
    catalogue, logs = generate_world(spec)
    prepared = prepare(config, catalogue, logs)
    fz = Featurizer(config).fit(prepared.rows("train"), prepared.catalogue)
    data = TrainingData.build(config, fz, prepared.merged(config.canvas_names), prepared.catalogue, torch.device("cpu"))
    kwargs = model_kwargs(config, fz)
    runs = {"ours": [], "bare": []}
    for r in range(repeats):  # interleaved, so that machine noise hits both alike
        torch.manual_seed(args.seed + r)
        runs["bare"].append(
            bare_loop(
                build_model(kwargs), data, config.train.batch_size, epochs, config.train.random_negatives, args.seed + r
            )
        )
        torch.manual_seed(args.seed + r)
        runs["ours"].append(ours(build_model(kwargs), config, data, epochs, args.seed + r))
    best = {k: max(v) for k, v in runs.items()}
    ratio = best["ours"] / best["bare"]
    print(f"samples/s: ours {best['ours']:.0f}  bare {best['bare']:.0f}  ratio {ratio:.3f} (target >= 0.8)")
    write_record(
        args.out,
        {
            "benchmark": "B7",
            "quick": args.quick,
            "rows": len(data),
            "epochs": epochs,
            "repeats": repeats,
            "batch_size": config.train.batch_size,
            "samples_per_s": runs,
            "best": best,
            "ratio": ratio,
            "config": dataclasses.asdict(config.model),
        },
    )


if __name__ == "__main__":
    main()
