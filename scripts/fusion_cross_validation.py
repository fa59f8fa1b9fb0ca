"""Judge a fusion rule on validation alone: choose the source weights on one half of each canvas's
validation requests, score them on the other half, for several rules (``train.fusion_margin``,
``train.fusion_cv_repeats`` and optionally ``train.fusion_k`` values, written MARGIN:REPEATS or
MARGIN:REPEATS:K; ``softmax``, ``either`` or ``softmax:REPEATS``... for the other
``train.fusion_method`` values).

    python scripts/fusion_cross_validation.py --data /tmp/synworld --data /tmp/synworld1 --rules 0:0 1:0 0:3

Per dataset: prepare, train the consolidated model (``train.seed``), retrieve and rank each canvas's
validation requests once (:func:`monorec.evaluation.fusion.fusion_inputs`); then ``--splits`` seeded random
halvings, each half choosing weights (:func:`monorec.evaluation.fusion.choose_weights`) for the other half to
score. Prints per canvas the held-out NDCG@k of each rule, averaged over the splits and the datasets, and
each rule minus the first with its standard error over (dataset, split, half) triples; beside them, for
reference, the orders that fit nothing on the same halves (the ranker alone, each source's order alone).
Reads no test data: this is how a fusion rule is chosen before Q1 runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from monorec.config import load_config
from monorec.data.prepared import prepare
from monorec.evaluation.evaluate import request_sets
from monorec.evaluation.fusion import (
    FusionRule,
    choose_weights,
    fused_ndcg,
    fusion_inputs,
    simple_orders,
    two_fold_splits,
)
from monorec.evaluation.recommenders import ModelRecommender
from monorec.pipeline import default_config, load_input
from monorec.train import train


def held_out(data: str, config_path: str, rules: list[str], splits: int) -> dict[str, dict[str, list[float]]]:
    """canvas -> rule -> held-out NDCG@k of each (split, half)."""
    config = load_config(config_path)
    catalogue, logs = load_input(config, data)
    prepared = prepare(config, catalogue, logs, inputs={"data": data})
    bundle = train(config, prepared, progress=False)
    k = config.evaluate.k
    requests = request_sets(config, prepared, "valid", max_requests=config.train.val_requests)
    recommender = ModelRecommender(bundle, prepared.catalogue, depth=config.evaluate.retrieval_depth)
    out: dict[str, dict[str, list[float]]] = {}
    for canvas, reqs in requests.items():
        if len(reqs) < 4:
            continue
        inputs = fusion_inputs(bundle, recommender, canvas, reqs, max(k, *(_rule(r).select_k for r in rules)))
        out[canvas] = {rule: [] for rule in rules}
        for choose, score in two_fold_splits(len(reqs), splits):
            on = inputs.take(score)
            relevant = [reqs.relevant[i] for i in score]
            picked = [reqs.relevant[i] for i in choose]
            for rule in rules:
                weights, _, _ = choose_weights(inputs.take(choose), picked, k, _rule(rule))
                out[canvas][rule].append(float(np.mean(fused_ndcg(on, weights, relevant, k))))
            for name, weights in simple_orders(inputs).items():  # references: nothing fitted
                out[canvas].setdefault(name, []).append(float(np.mean(fused_ndcg(on, weights, relevant, k))))
    return out


def _rule(rule: str) -> FusionRule:
    """MARGIN:REPEATS[:K] (the grid ascent) or softmax[:REPEATS] -> the rule."""
    parts = rule.split(":")
    if parts[0] in ("softmax", "either", "bagged"):
        return FusionRule(parts[0], cv_repeats=int(parts[1]) if len(parts) > 1 else 0)  # type: ignore[arg-type]
    return FusionRule("grid", float(parts[0]), int(parts[1]), int(parts[2]) if len(parts) > 2 else 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", required=True, help="a dataset folder (repeat for several)")
    p.add_argument("--config", default="synthetic", help="a shipped config name or a TOML path")
    rules_help = "MARGIN:CV_REPEATS[:K], softmax[:CV_REPEATS] or either[:CV_REPEATS]"
    p.add_argument("--rules", nargs="+", default=["0:0", "1:0", "0:3"], help=rules_help)
    p.add_argument("--splits", type=int, default=5, help="seeded random halvings per dataset")
    p.add_argument("--out", help="also write the figures as JSON")
    args = p.parse_args()
    path = str(default_config(args.config)) if args.config in ("synthetic", "movielens") else args.config
    runs = {data: held_out(data, path, args.rules, args.splits) for data in args.data}
    canvases = list(next(iter(runs.values())))
    summary: dict[str, dict[str, float]] = {}
    for canvas in canvases:
        names = [*args.rules, *(n for n in next(iter(runs.values()))[canvas] if n not in args.rules)]
        values = {rule: np.array([v for d in runs for v in runs[d][canvas][rule]]) for rule in names}
        base = values[args.rules[0]]
        line = []
        for rule in names:
            diff = values[rule] - base
            se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
            summary[f"{canvas}/{rule}"] = float(values[rule].mean())
            line.append(f"{rule}: {values[rule].mean():.4f} ({diff.mean():+.4f} +- {se:.4f})")
        print(f"{canvas:>8}  " + "  ".join(line))
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": runs, "summary": summary}, indent=1, default=str))


if __name__ == "__main__":
    main()
