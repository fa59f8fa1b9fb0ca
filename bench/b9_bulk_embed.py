"""B9: bulk re-embedding of a catalogue for a new version vs the item tower's forward alone.

Ours: ``Deployment.stage`` of a published version over a catalogue of N entities: paging the catalogue
store, featurizing, the item tower, upserting into the version's index (exact faiss) and its item
features, checkpoints, catch-up and validation (checksummed reload, identity with the catalogue, canary).
The anchor: the same item tower's forward on the same batches, featurized in advance (pure compute).

    python bench/b9_bulk_embed.py --out b9.json [--items 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_record
from _serving import bench_config, synthetic_catalogue, two_version_registry
from monorec.bundle import item_tensors
from monorec.deployment import Deployment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--quick", action="store_true", help="20k entities (checks the script runs)")
    args = ap.parse_args()
    n = 20_000 if args.quick else args.items
    tmp = Path(tempfile.mkdtemp())
    config = bench_config(batch_size=args.batch)
    registry, _ = two_version_registry(tmp / "registry", config)
    catalogue = synthetic_catalogue(n)

    with Deployment(tmp / "dep", registry, progress=not args.quick) as dep:
        dep.seed_catalogue(catalogue)
        started = time.perf_counter()
        dep.stage("v0001")
        ours_s = time.perf_counter() - started
        assert len(dep.versions["v0001"].index) == n

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
        },
    )


if __name__ == "__main__":
    main()
