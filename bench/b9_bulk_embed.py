"""B9: bulk re-embedding of a catalogue for a new version vs the item tower's forward alone.

Ours: ``Deployment.stage`` of a published version over a catalogue of N entities: paging the catalogue
store, featurizing, the item tower, upserting into the version's index (exact faiss) and its item
features, checkpoints, catch-up and validation (checksummed reload, identity with the catalogue, canary).
The anchor: the same item tower's forward on the same batches, featurized in advance (pure compute).

On Ray (``--ray-workers N``): the same stage of the same version in a second folder, its catalogue encoded
by N actors of a local Ray cluster (``monorec.distributed.RayBulkEmbedder``; the deployment still writes the
index), timed apart from Ray's start-up, which is reported on its own.

    python bench/b9_bulk_embed.py --out b9.json [--items 1000000] [--ray-workers 2] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import scratch_dir, write_record
from _serving import bench_config, synthetic_catalogue, two_version_registry
from monorec.bundle import item_tensors
from monorec.deployment import Deployment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--ray-workers", type=int, default=0, help="also stage on Ray with this many actors (0: not)")
    ap.add_argument("--quick", action="store_true", help="20k entities (checks the script runs)")
    args = ap.parse_args()
    n = 20_000 if args.quick else args.items
    tmp = scratch_dir()
    config = bench_config(batch_size=args.batch)
    registry, _ = two_version_registry(tmp / "registry", config)
    catalogue = synthetic_catalogue(n)

    with Deployment(tmp / "dep", registry, progress=not args.quick) as dep:
        dep.seed_catalogue(catalogue)
        started = time.perf_counter()
        dep.stage("v0001")
        ours_s = time.perf_counter() - started
        assert len(dep.versions["v0001"].index) == n
    ray_figures = stage_on_ray(tmp, registry, catalogue, args.ray_workers, ours_s) if args.ray_workers else {}

    bundle = registry.load("v0001")
    items = item_tensors(bundle.featurizer.transform_catalogue(catalogue))
    model = bundle.model.eval()
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, n, args.batch):
            model.encode_items({k: v[start : start + args.batch] for k, v in items.items()})
    anchor_s = time.perf_counter() - started

    started = time.perf_counter()  # where the rest goes: featurizing (Python tokenizing/hashing) + forward
    with torch.no_grad():
        for start in range(0, n, args.batch):
            page = catalogue.slice(start, args.batch)
            model.encode_items(item_tensors(bundle.featurizer.transform_catalogue(page)))
    featurize_forward_s = time.perf_counter() - started

    ours, anchor = n / ours_s, n / anchor_s
    print(
        f"bulk stage {ours:,.0f} items/s; item tower forward alone {anchor:,.0f} items/s; ratio {ours / anchor:.3f}; "
        f"featurize + forward {n / featurize_forward_s:,.0f} items/s"
    )
    write_record(
        args.out,
        {
            "benchmark": "B9",
            "items": n,
            "batch": args.batch,
            "ours_items_per_s": ours,
            "anchor_items_per_s": anchor,
            "ratio": ours / anchor,
            "ours_seconds": ours_s,
            "anchor_seconds": anchor_s,
            "featurize_forward_items_per_s": n / featurize_forward_s,
            "ratio_vs_featurize_forward": ours / (n / featurize_forward_s),
            "quick": args.quick,
            **ray_figures,
        },
    )


def stage_on_ray(tmp: Path, registry, catalogue, workers: int, in_process_s: float) -> dict:  # type: ignore[no-untyped-def]
    """The same stage with the catalogue encoded on a local Ray cluster of ``workers`` actors."""
    from monorec.distributed import RayBulkEmbedder, ray_session

    n = catalogue.height
    started = time.perf_counter()
    with ray_session("auto", cpus=workers):
        startup_s = time.perf_counter() - started
        embedder = RayBulkEmbedder(registry.root, "v0001", tmp / "blocks", workers=workers)
        with Deployment(tmp / "dep-ray", registry) as dep:
            dep.seed_catalogue(catalogue)
            started = time.perf_counter()
            dep.stage("v0001", encoder=embedder)
            ray_s = time.perf_counter() - started
            assert len(dep.versions["v0001"].index) == n
    print(
        f"on Ray ({workers} actors): {n / ray_s:,.0f} items/s = {in_process_s / ray_s:.2f}x in process; "
        f"Ray start-up {startup_s:.1f} s"
    )
    return {
        "ray_workers": workers,
        "ray_items_per_s": n / ray_s,
        "ray_seconds": ray_s,
        "ray_startup_seconds": startup_s,
        "ray_vs_in_process": in_process_s / ray_s,
    }


if __name__ == "__main__":
    main()
