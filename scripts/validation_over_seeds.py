"""Judge a change on validation over training seeds: the consolidated model's fused and ranker-alone
validation NDCG@k per canvas, per seed, and their means. Reads no test data.

    python scripts/validation_over_seeds.py --data /tmp/synworld --config synthetic --seeds 3
    python scripts/validation_over_seeds.py --data /tmp/synworld --config synthetic --seeds 3 \
        --set model.text_match=true --out runs/val_text_match.json

Each seed prepares its own merge sample (the stratified merge draws with ``train.seed``) and trains the
consolidated model; the figures are what training records in the bundle's ``meta["source_weights"]``:
per canvas the validation NDCG@k of the ranker fused with the candidate sources (the fusion weights chosen
on the same requests) and of the ranker alone. How docs/benchmarks.md decides whether a model change is
adopted, before any test figure is read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from learning_curves import override

from monorec.config import load_config
from monorec.data.prepared import prepare
from monorec.pipeline import default_config, load_input
from monorec.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a dataset folder the config's adapter reads")
    p.add_argument("--config", default="synthetic", help="a shipped config name or a TOML path")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--out", help="also write the figures as JSON")
    args = p.parse_args()
    path = default_config(args.config) if args.config in ("synthetic", "movielens") else args.config
    config = override(load_config(path), args.set)
    catalogue, logs = load_input(config, args.data)
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    for seed in range(args.seeds):
        started = time.perf_counter()
        seeded = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
        bundle = train(seeded, prepare(seeded, catalogue, logs, inputs={"data": args.data}), progress=False)
        fusion = bundle.meta["source_weights"]
        per_seed[seed] = {c: {m: v for m, v in w.items() if m.startswith("ndcg")} for c, w in fusion.items()}
        print(f"seed {seed} ({time.perf_counter() - started:.0f} s, epoch {bundle.meta.get('best_epoch')}):")
        for canvas, m in per_seed[seed].items():
            print(f"  {canvas:>8}  " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    canvases = list(per_seed[0])
    metrics = list(per_seed[0][canvases[0]])
    mean = {c: {m: sum(per_seed[s][c][m] for s in per_seed) / len(per_seed) for m in metrics} for c in canvases}
    print(f"mean over {len(per_seed)} seeds:")
    for canvas, m in mean.items():
        print(f"  {canvas:>8}  " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": args.set, "per_seed": per_seed, "mean": mean}, indent=1))


if __name__ == "__main__":
    main()
