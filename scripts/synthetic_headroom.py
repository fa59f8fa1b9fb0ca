"""How good can a model get on a synthetic world? NDCG@10 of rankings by the world's hidden truth, on the
test requests that Q1 evaluates, beside the true popularity order.

    python scripts/synthetic_headroom.py --data /tmp/synworld [--data /tmp/synworld1 ...] [--out F.json]

The world generator draws every click from a latent utility (``monorec.data.world.LatentWorld``): on home
the user's affinity (taste . item + popularity + a TV's lean to series), on browse the category first,
then half the affinity. Ranking by that utility is the best any model of the logs can expect; ranking by
the TRUE popularity (and the category, on browse) is the best a popularity count can. The gap between them
is the room personalisation has on that canvas: where it is ~0, a model can at best tie the popularity
baseline, and a test split's noise decides the sign of their difference. Reads the test split (a ceiling
is measured, nothing is chosen by it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from monorec.config import load_config
from monorec.data.prepared import prepare
from monorec.data.world import WorldSpec, latent_world
from monorec.evaluation.evaluate import request_sets
from monorec.evaluation.metrics import ndcg_at_k
from monorec.evaluation.recommenders import top_k_excluding
from monorec.pipeline import default_config, load_input

K = 10


def headroom(data: str) -> dict[str, dict[str, float]]:
    """canvas -> {"oracle", "true_popularity", "requests"} on the world written at ``data``."""
    spec = WorldSpec(**json.loads((Path(data) / "manifest.json").read_text())["spec"])
    world, _ = latent_world(spec)
    config = load_config(default_config("synthetic"))
    catalogue, logs = load_input(config, data)
    prepared = prepare(config, catalogue, logs, inputs={"data": data})
    position = {e: i for i, e in enumerate(world.item_ids)}
    items = np.array([position[e] for e in prepared.catalogue["entity_id"].to_list()])  # catalogue -> world
    out: dict[str, dict[str, float]] = {}
    for canvas, reqs in request_sets(config, prepared, "test").items():
        if canvas not in ("home", "browse"):
            continue
        users = np.array([int(u[1:]) for u in reqs.contexts["user_id"].to_list()])  # "u00042" -> 42
        evening = (reqs.contexts["hour"].to_numpy() >= 18).astype(np.float64)
        utility = world.affinity(users, evening)  # (R, I) in the world's item order
        popular = np.broadcast_to(world.popularity, utility.shape).copy()
        if canvas == "browse":
            topics = [world.topics.index(c) for c in reqs.contexts["category"].to_list()]
            utility = np.stack([world.browse_utility(a, t) for a, t in zip(utility, topics, strict=True)])
            popular += 100.0 * world.in_topic[:, topics].T  # the category's entities first, by popularity
        scores = {"oracle": utility[:, items], "true_popularity": popular[:, items]}  # (R, N) catalogue order
        out[canvas] = {"requests": len(reqs)}
        for name, s in scores.items():
            top = top_k_excluding(torch.as_tensor(s, dtype=torch.float32), reqs.exclude, K).numpy()
            out[canvas][name] = float(np.mean(ndcg_at_k(top, reqs.relevant, K)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", required=True, help="a world written by `monorec generate`")
    p.add_argument("--out", help="also write the figures as JSON")
    args = p.parse_args()
    results = {}
    for data in args.data:
        results[data] = headroom(data)
        for canvas, r in results[data].items():
            print(
                f"{data}  {canvas:>7}  oracle NDCG@{K} {r['oracle']:.4f}  true popularity {r['true_popularity']:.4f}"
                f"  ({r['requests']} requests)"
            )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
