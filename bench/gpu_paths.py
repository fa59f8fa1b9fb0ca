"""The GPU paths: training steps, bulk item embedding and exact search on one device, each beside its CPU
anchor in the same run, recorded in the benchmarks' JSON format.

Run where a GPU exists (`--device cuda`, or `auto`); here (no GPU) `auto` measures the CPU alone, which
proves the script works. Every device choice goes through ``monorec.devices.resolve_device``: `--device
cuda` without one is a clear error before any work.

- training: monorec's training step loop (``TrainStep``, what ``train()`` runs each epoch) over the
  synthetic world's merged rows, with the rows and the model on the device: samples/s;
- bulk embedding: the item tower's forward over a synthetic catalogue featurized in advance: items/s;
- exact search: top-10 by inner product of queries against every vector (a matmul and a top-k on the
  device) vs faiss's exact index on the CPU, with the two answers compared: queries/s.

    python bench/gpu_paths.py --device auto --out gpu.json [--items 1000000] [--queries 10000] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_record
from _serving import bench_config, synthetic_catalogue
from monorec.bundle import item_tensors
from monorec.data.features import Featurizer
from monorec.data.prepared import prepare
from monorec.data.world import WorldSpec, generate_world
from monorec.devices import resolve_device
from monorec.models.model import build_model, model_kwargs
from monorec.train_step import TrainStep
from monorec.training_data import TrainingData


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training(device: torch.device, spec: WorldSpec, steps: int) -> tuple[float, torch.nn.Module, Featurizer]:
    """samples/s of ``steps`` training steps with the rows and the model on ``device``; the model and its
    featurizer (for the bulk embedding)."""
    config = bench_config()
    catalogue, logs = generate_world(spec)
    prepared = prepare(config, catalogue, logs)
    featurizer = Featurizer(config).fit(prepared.rows("train"), prepared.catalogue)
    data = TrainingData.build(config, featurizer, prepared.merged(config.canvas_names), prepared.catalogue, device)
    model = build_model({**model_kwargs(config, featurizer), "sparse_tables": False}).to(device)
    step = TrainStep(model, config, data, torch.Generator().manual_seed(0))
    batches = data.batches(config.train.batch_size, torch.Generator().manual_seed(0))[: steps + 1]
    step.step(batches[0])  # the first step pays one-off set-up (kernels, allocator)
    synchronize(device)
    started = time.perf_counter()
    for idx in batches[1:]:
        step.step(idx)
    synchronize(device)
    return sum(len(b) for b in batches[1:]) / (time.perf_counter() - started), model, featurizer


def bulk_embedding(
    device: torch.device, model: torch.nn.Module, featurizer: Featurizer, items: int, batch: int
) -> float:
    """items/s of the item tower's forward over ``items`` entities featurized in advance."""
    model = model.eval()
    tensors = item_tensors(featurizer.transform_catalogue(synthetic_catalogue(items)), device)
    with torch.no_grad():
        model.encode_items({k: v[:batch] for k, v in tensors.items()})
        synchronize(device)
        started = time.perf_counter()
        for start in range(0, items, batch):
            model.encode_items({k: v[start : start + batch] for k, v in tensors.items()})
        synchronize(device)
    return items / (time.perf_counter() - started)


def exact_search(device: torch.device, items: int, queries: int, dim: int = 64, k: int = 10) -> dict[str, float]:
    """queries/s of exact top-k on ``device`` and with faiss's flat index on the CPU, and their agreement."""
    import faiss

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((items, dim), dtype=np.float32)
    asked = rng.standard_normal((queries, dim), dtype=np.float32)
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    started = time.perf_counter()
    _, cpu_ids = index.search(asked, k)
    faiss_qps = queries / (time.perf_counter() - started)
    v, q = torch.as_tensor(vectors, device=device), torch.as_tensor(asked, device=device)
    chunk = max(1, (1 << 28) // (items * 4))  # queries per matmul: a score block of at most 1 GiB
    (q[:chunk] @ v.T).topk(k, dim=1)
    synchronize(device)
    started = time.perf_counter()
    found = [(q[s : s + chunk] @ v.T).topk(k, dim=1).indices for s in range(0, queries, chunk)]
    synchronize(device)
    device_qps = queries / (time.perf_counter() - started)
    pairs = zip(torch.cat(found).cpu().numpy(), cpu_ids, strict=True)
    same = float(np.mean([len(set(a) & set(b)) / k for a, b in pairs]))
    return {"device_queries_per_s": device_qps, "faiss_cpu_queries_per_s": faiss_qps, "top10_agreement": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=100, help="training steps timed")
    ap.add_argument("--quick", action="store_true", help="20k items, 200 queries, 5 steps (checks it runs)")
    args = ap.parse_args()
    device = resolve_device(args.device)  # a missing GPU is said before any work
    items, queries, steps = (20_000, 200, 5) if args.quick else (args.items, args.queries, args.steps)
    spec = WorldSpec(n_users=150, n_items=200, n_requests=1500) if args.quick else WorldSpec()
    figures: dict[str, object] = {"device": str(device)}
    if device.type == "cuda":
        figures["gpu"] = torch.cuda.get_device_name(device)
    devices = [device] if device.type == "cpu" else [device, torch.device("cpu")]  # the CPU: the anchor
    for where in devices:
        name = "device" if where == device else "cpu"
        figures[f"{name}_training_samples_per_s"], model, featurizer = training(where, spec, steps)
        figures[f"{name}_bulk_embedding_items_per_s"] = bulk_embedding(where, model, featurizer, items, 8192)
    figures.update(exact_search(device, items, queries))
    for key, value in figures.items():
        print(f"{key}: {value:,.1f}" if isinstance(value, float) else f"{key}: {value}")
    write_record(
        args.out,
        {"benchmark": "GPU paths", "items": items, "queries": queries, "steps": steps, "quick": args.quick, **figures},
    )


if __name__ == "__main__":
    main()
