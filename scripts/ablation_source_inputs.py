"""Ablation: the consolidated model with and without source scores as ranker inputs, on a prepared world.

    python scripts/ablation_source_inputs.py --prepared runs/demo/prepared --config synthetic --inputs none
    python scripts/ablation_source_inputs.py --prepared runs/demo/prepared --config synthetic --inputs lexical
    python scripts/ablation_source_inputs.py --prepared runs/demo/prepared --config synthetic \
        --inputs lexical,cooccurrence,popular

Trains with ``model.source_inputs`` set to ``--inputs`` ("none": the default) and prints each epoch's
validation score, the chosen epoch, and the test recall@10 / NDCG@10 and fusion weights of every canvas.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from monorec.config import load_config
from monorec.data.prepared import PreparedData
from monorec.evaluation.evaluate import evaluate_bundle, request_sets
from monorec.pipeline import default_config
from monorec.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepared", required=True, help="a prepared folder (make demo writes runs/demo/prepared)")
    p.add_argument("--config", default="synthetic", help="a shipped config name or a TOML path")
    p.add_argument("--inputs", default="none", help="comma-separated offline sources, or none")
    args = p.parse_args()
    path = default_config(args.config) if args.config in ("synthetic", "movielens") else args.config
    config = load_config(path)
    inputs = () if args.inputs == "none" else tuple(args.inputs.split(","))
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, source_inputs=inputs))
    prepared = PreparedData.load(args.prepared)
    started = time.perf_counter()
    bundle = train(config, prepared, progress=False)
    report = evaluate_bundle(bundle, prepared, "test", request_sets(config, prepared, "test"))
    scores = [round(h["val_score"], 4) for h in bundle.meta["history"]]
    print(f"inputs {args.inputs}: validation by epoch {scores}, kept epoch {bundle.meta['best_epoch'] + 1}")
    for canvas, m in report["canvases"].items():
        weights = {k: v for k, v in m.get("source_weights", {}).items() if not k.startswith("ndcg")}
        print(f"  {canvas:8s} recall@10 {m['recall@10']:.4f}  ndcg@10 {m['ndcg@10']:.4f}  fusion {weights}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
