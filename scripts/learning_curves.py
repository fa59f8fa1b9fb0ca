"""Learning curves: each task's training and validation loss by epoch, for a config and overrides.

    python scripts/learning_curves.py --prepared /tmp/mlprep --config movielens --epochs 6
    python scripts/learning_curves.py --prepared /tmp/mlprep --config movielens --epochs 4 \
        --set model.dropout=0.3 --set train.embedding_lr=0.001
    python scripts/learning_curves.py --prepared /tmp/mlprep --config movielens --epochs 6 --ndcg

Trains the consolidated model for ``--epochs`` epochs without early stopping and prints, per epoch, the
mean training loss of every task (each objective, retrieval, the every-prefix history loss) and the same
losses on the validation rows; with ``--ndcg`` also each canvas's NDCG@k over its validation requests
(retrieval from the whole catalogue, then ranking: what serving does), which a loss alone can hide when
the model grows confident. Reads no test data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

from monorec.config import ProjectConfig, load_config
from monorec.data.prepared import PreparedData
from monorec.pipeline import default_config
from monorec.train import train


def override(config: ProjectConfig, settings: list[str]) -> ProjectConfig:
    """``section.key=value`` settings (the value as JSON, else a string) applied to the config."""
    for setting in settings:
        key, _, raw = setting.partition("=")
        section, _, name = key.partition(".")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        part = getattr(config, section)
        config = dataclasses.replace(config, **{section: dataclasses.replace(part, **{name: value})})
    return config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepared", required=True, help="a prepared folder (monorec prepare --out DIR)")
    p.add_argument("--config", default="movielens", help="a shipped config name or a TOML path")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--ndcg", action="store_true", help="also each canvas's validation NDCG@k per epoch")
    args = p.parse_args()
    path = default_config(args.config) if args.config in ("synthetic", "movielens") else args.config
    config = override(load_config(path), args.set)
    config = dataclasses.replace(
        config,
        train=dataclasses.replace(
            config.train,
            epochs=args.epochs,
            patience=args.epochs,
            selection="ndcg" if args.ndcg else "loss",
        ),
    )
    started = time.perf_counter()
    bundle = train(config, PreparedData.load(args.prepared), progress=True)  # a line per epoch
    for h in bundle.meta["history"]:
        train_losses = {k: round(v, 3) for k, v in h["train_losses"].items()}
        val_losses = {k: round(v, 3) for k, v in h["val_losses"].items()}
        print(f"epoch {h['epoch'] + 1}: train {train_losses}")
        print(f"{'':>8} valid {val_losses} (sum {sum(h['val_losses'].values()):.3f})")
        if h["val"]:
            k = config.evaluate.k
            ndcg = {c: round(m[f"ndcg@{k}"], 4) for c, m in h["val"].items()}
            print(f"{'':>8} valid NDCG@{k} {ndcg} (selection score {h['val_score']:.4f})")
    print(f"kept epoch {bundle.meta['best_epoch'] + 1} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
