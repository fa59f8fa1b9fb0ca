"""Q3: the standard sequential-recommendation protocol (RecBole's published benchmark), beside Q1's product
protocol, so that monorec's figures can be set beside published ones.

    python bench/q3_standard_protocol.py --data ../shared/data/ml-latest-small --out q3.json [--quick]

Protocol: keep ratings >= 3; keep users and items with >= 10 interactions (repeated until stable); each
user's interactions in time order (ties: the MovieLens adapter's order); the last one is the test target,
the one before the validation target, all earlier ones train. Every model ranks the FULL item set, the
user's earlier items excluded; HR@10 (= Recall@10 with one target), NDCG@10 and MRR@10 over all users.
The request is the home canvas: the user and their history (most recent last, at most 50).

Models, in one run: monorec consolidated (trained on the training part of every canvas the data gives:
home, related, browse, search where tags exist; evaluated on home), monorec dedicated home, and the
references of bench/_references.py: Pop, ItemKNN, EASE (its lambda chosen on validation) and SASRec
(early stopping on validation). The test targets are read once, for the final figures.

Writes {"dataset": {users, items, interactions}, "models": {MODEL: {"hr@10", "ndcg@10", "mrr@10", ...}},
"differences": {MODEL: {METRIC: {delta, ci95, verdict}}} (monorec consolidated minus each model, paired
bootstrap over users), ...}.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_missing, write_record
from _references import (
    SASRecSpec,
    ease_weights,
    itemknn_scores,
    popularity_scores,
    sasrec_scores,
    train_sasrec,
)
from monorec.config import ProjectConfig, load_config
from monorec.data.merge import stratified_merge
from monorec.data.movielens import _load_raw, read_movielens
from monorec.data.prepared import PreparedData, prepare
from monorec.evaluation.compare import paired_bootstrap
from monorec.evaluation.recommenders import ModelRecommender
from monorec.evaluation.requests import RequestSet
from monorec.pipeline import dedicated_config, default_config
from monorec.train import train

K = 10
HISTORY = 50
EASE_LAMBDAS = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)


# ----------------------------------------------------------------------------------------- the data


def filtered_ratings(path: str, min_rating: float = 3.0, core: int = 10) -> pl.DataFrame:
    """The protocol's interactions: ratings >= 3, then the 10-core filter repeated until stable."""
    ratings, _, _ = _load_raw(Path(path))
    r = ratings.filter(pl.col("rating") >= min_rating)
    while True:
        r2 = r.filter((pl.len().over("user") >= core) & (pl.len().over("movie") >= core))
        if r2.height == r.height:
            return r
        r = r2


def write_filtered_movielens(path: str, ratings: pl.DataFrame, out: Path) -> None:
    """The filtered interactions as a ml-latest style folder (ratings, the kept movies, their users' tags),
    so that the MovieLens adapter derives every canvas from exactly the protocol's data."""
    _, movies, tags = _load_raw(Path(path))
    out.mkdir(parents=True, exist_ok=True)
    ratings.select(
        pl.col("user").alias("userId"), pl.col("movie").alias("movieId"), "rating", pl.col("ts").alias("timestamp")
    ).write_csv(out / "ratings.csv")
    kept = ratings["movie"].unique().implode()
    movies.filter(pl.col("movie").is_in(kept)).rename({"movie": "movieId"}).select(
        "movieId", "title", "genres"
    ).write_csv(out / "movies.csv")
    if tags is not None:
        users = ratings["user"].unique().implode()
        tags.filter(pl.col("movie").is_in(kept) & pl.col("user").is_in(users)).select(
            pl.col("user").alias("userId"), pl.col("movie").alias("movieId"), "tag", pl.col("ts").alias("timestamp")
        ).write_csv(out / "tags.csv")


@dataclasses.dataclass
class Protocol:
    """Per user (U, in one order): the training items, the validation and test targets (catalogue rows)."""

    users: list[str]
    train: list[list[int]]
    valid: np.ndarray  # (U,)
    test: np.ndarray  # (U,)
    n_items: int
    valid_ts: dict[str, int]  # user -> timestamp of the validation interaction

    def inputs(self, split: str) -> list[list[int]]:
        """Each user's earlier items for a split's target: train only (valid), train + valid (test)."""
        if split == "valid":
            return self.train
        return [[*t, int(v)] for t, v in zip(self.train, self.valid, strict=True)]

    def matrix(self, seqs: list[list[int]]) -> np.ndarray:
        """(U, I) 0/1 float32 (a movie rated twice counts once)."""
        m = np.zeros((len(seqs), self.n_items), dtype=np.float32)
        for u, s in enumerate(seqs):
            m[u, s] = 1.0
        return m


def leave_last_out(home: pl.DataFrame, catalogue: pl.DataFrame) -> Protocol:
    """From the home rows (one per interaction, in the adapter's order: user, time, movie)."""
    position = {e: i for i, e in enumerate(catalogue["entity_id"].to_list())}
    users, train_seqs, valid, test, valid_ts = [], [], [], [], {}
    for (user,), g in home.group_by("user_id", maintain_order=True):
        items = [position[e] for e in g["entity_id"].to_list()]
        users.append(user)
        train_seqs.append(items[:-2])
        valid.append(items[-2])
        test.append(items[-1])
        valid_ts[user] = int(g["ts"][-2])
    return Protocol(users, train_seqs, np.array(valid), np.array(test), catalogue.height, valid_ts)


# ------------------------------------------------------------------------------------------ metrics


def per_user(topk: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """(U, K) recommendations, (U,) single targets -> per-user hr, ndcg and mrr at K."""
    hit = topk[:, :K] == targets[:, None]
    rank = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    found = rank >= 0
    at = np.maximum(rank, 0).astype(np.float64)  # the rank where found (0 elsewhere, masked out below)
    return {
        f"hr@{K}": found.astype(np.float64),
        f"ndcg@{K}": np.where(found, 1.0 / np.log2(at + 2.0), 0.0),
        f"mrr@{K}": np.where(found, 1.0 / (at + 1.0), 0.0),
    }


def top_k(scores: np.ndarray, exclude: list[list[int]]) -> np.ndarray:
    scores = np.array(scores, dtype=np.float32, copy=True)
    for u, seen in enumerate(exclude):
        scores[u, seen] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :K]


def summary(values: dict[str, np.ndarray]) -> dict[str, float]:
    return {m: float(v.mean()) for m, v in values.items()}


# ------------------------------------------------------------------------------------------ monorec


def protocol_prepared(config: ProjectConfig, catalogue: pl.DataFrame, logs: pl.DataFrame, p: Protocol) -> PreparedData:
    """monorec's prepared data with the protocol's split instead of the global time split: a row is in the
    split of the interaction it answers (the user's last one: test, the one before: valid, else train);
    a search row (a tag) is train when it precedes the user's validation interaction, else left out."""
    prepared = prepare(config, catalogue, logs, inputs={"protocol": "leave-last-out"})
    valid_of = pl.DataFrame(
        {
            "user_id": p.users,
            "_valid": catalogue["entity_id"].gather(p.valid).to_list(),
            "_test": catalogue["entity_id"].gather(p.test).to_list(),
            "_valid_ts": [p.valid_ts[u] for u in p.users],
        }
    )
    primary = prepared.manifest["primary_columns"]
    canvases = {}
    for name, frame in prepared.canvases.items():
        f = frame.join(valid_of, on="user_id", how="left")
        positive = pl.col(primary[name]) == 1
        if name == "search":
            split = pl.when(pl.col("ts") < pl.col("_valid_ts")).then(pl.lit("train")).otherwise(pl.lit("drop"))
        else:
            split = (
                pl.when(pl.col("entity_id") == pl.col("_test"))
                .then(pl.lit("test"))
                .when(pl.col("entity_id") == pl.col("_valid"))
                .then(pl.lit("valid"))
                .otherwise(pl.lit("train"))
            )
        # a sampled negative belongs to its positive's request: it takes that request's split
        by_request = f.filter(positive).select("request_id", split.alias("_split")).unique("request_id")
        f = f.drop("split").join(by_request, on="request_id", how="inner").rename({"_split": "split"})
        canvases[name] = f.filter(pl.col("split") != "drop").drop("_valid", "_test", "_valid_ts")
    train_rows = {n: f.filter(pl.col("split") == "train") for n, f in canvases.items()}
    merged, mixture = stratified_merge(train_rows, config, total_rows=config.train.max_train_rows or None, seed=0)
    manifest = {
        **prepared.manifest,
        "rows": {n: {s: int((f["split"] == s).sum()) for s in ("train", "valid", "test")} for n, f in canvases.items()},
        "mixture": mixture,
        "merged_rows": merged.height,
        "empty_canvases": [n for n, f in train_rows.items() if f.height == 0],
    }
    return PreparedData(catalogue, canvases, merged, manifest)


def home_requests(p: Protocol, catalogue: pl.DataFrame, split: str) -> RequestSet:
    inputs = p.inputs(split)
    ids = catalogue["entity_id"].to_list()
    contexts = pl.DataFrame(
        {
            "task_type": ["home"] * len(p.users),
            "user_id": p.users,
            "history": ["|".join(ids[i] for i in s[-HISTORY:]) or None for s in inputs],
        },
        schema={"task_type": pl.String, "user_id": pl.String, "history": pl.String},
    )
    targets = p.test if split == "test" else p.valid
    return RequestSet(
        "home",
        contexts,
        [np.array([t]) for t in targets],
        [np.unique(np.asarray(s, dtype=np.int64)) for s in inputs],
        np.zeros(len(p.users), dtype=bool),
    )


def monorec_topk(bundle: Any, catalogue: pl.DataFrame, requests: RequestSet, depth: int) -> np.ndarray:
    return ModelRecommender(bundle, catalogue, depth=depth).recommend(requests, K)


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/ml-latest-small")
    p.add_argument("--out", default="q3.json")
    p.add_argument("--config", default=str(default_config("movielens")))
    p.add_argument("--quick", action="store_true", help="an eighth of the users, one epoch, 2 EASE lambdas (CI)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if data_missing(args.data, "MovieLens"):
        return
    started = time.perf_counter()
    ratings = filtered_ratings(args.data)
    if args.quick:
        keep = ratings["user"].unique().sort().gather_every(8).implode()
        ratings = ratings.filter(pl.col("user").is_in(keep))
    with tempfile.TemporaryDirectory() as tmp:
        write_filtered_movielens(args.data, ratings, Path(tmp))
        catalogue, logs = read_movielens(tmp, history=HISTORY)
    home = logs.filter(pl.col("canvas") == "home")
    proto = leave_last_out(home, catalogue)
    dataset = {"users": len(proto.users), "items": catalogue.height, "interactions": home.height}
    print(f"after filtering: {dataset}")

    train_m = proto.matrix(proto.train)
    valid_in, test_in = proto.inputs("valid"), proto.inputs("test")
    results: dict[str, dict[str, np.ndarray]] = {}
    notes: dict[str, Any] = {}
    clock = time.perf_counter()

    def done(name: str) -> None:  # progress: the full run takes a long while on 2 cores
        m = summary(results[name])
        line = "  ".join(f"{k} {v:.4f}" for k, v in m.items())
        print(f"[{time.perf_counter() - clock:7.0f} s] {name:>22}  {line}", flush=True)

    results["pop"] = per_user(top_k(popularity_scores(train_m, len(proto.users)), test_in), proto.test)
    done("pop")
    results["itemknn"] = per_user(top_k(itemknn_scores(train_m, proto.matrix(test_in)), test_in), proto.test)
    done("itemknn")

    # EASE: lambda on validation (train items in, validation target out), then the test with train + valid in
    choice = {}
    for lam in EASE_LAMBDAS[2:4] if args.quick else EASE_LAMBDAS:
        b = ease_weights(train_m, lam)
        choice[lam] = per_user(top_k(proto.matrix(valid_in) @ b, valid_in), proto.valid)[f"ndcg@{K}"].mean()
    lam = max(choice, key=lambda x: choice[x])
    results["ease"] = per_user(top_k(proto.matrix(test_in) @ ease_weights(train_m, lam), test_in), proto.test)
    done("ease")
    notes["ease"] = {"lambda": lam, "valid_ndcg@10": {str(k): float(v) for k, v in choice.items()}}

    spec = SASRecSpec(seed=args.seed, max_len=HISTORY, epochs=2 if args.quick else 200)
    shift = [[i + 1 for i in s] for s in proto.train]  # SASRec's ids: 0 is padding

    def sasrec_valid(model: Any, inputs: list[list[int]], targets: np.ndarray) -> float:
        scores = sasrec_scores(model, inputs, spec.max_len)
        return float(per_user(top_k(scores, [[i - 1 for i in s] for s in inputs]), targets)[f"ndcg@{K}"].mean())

    torch.set_num_threads(torch.get_num_threads())
    sasrec, curve = train_sasrec(catalogue.height, shift, shift, proto.valid, spec, sasrec_valid)
    test_shift = [[i + 1 for i in s] for s in test_in]
    results["sasrec"] = per_user(top_k(sasrec_scores(sasrec, test_shift, spec.max_len), test_in), proto.test)
    done("sasrec")
    notes["sasrec"] = {"spec": dataclasses.asdict(spec), "curve": curve}

    config = load_config(args.config)
    fields = tuple(dataclasses.replace(f, max_tokens=HISTORY) if f.kind == "id_list" else f for f in config.fields)
    quick = {"epochs": 1, "max_train_rows": 20_000, "val_requests": 100} if args.quick else {}
    train_spec = dataclasses.replace(config.train, seed=args.seed, **quick)
    config = dataclasses.replace(config, fields=fields, train=train_spec)
    prepared = protocol_prepared(config, catalogue, logs, proto)
    depth = config.evaluate.retrieval_depth
    test_requests = home_requests(proto, catalogue, "test")
    consolidated = train(config, prepared, progress=False)
    results["monorec_consolidated"] = per_user(monorec_topk(consolidated, catalogue, test_requests, depth), proto.test)
    done("monorec_consolidated")
    dedicated = config if args.quick else dedicated_config(config, prepared, "home")
    home_only = train(dedicated, prepared, canvases=("home",), progress=False)
    results["monorec_home"] = per_user(monorec_topk(home_only, catalogue, test_requests, depth), proto.test)
    done("monorec_home")
    notes["monorec"] = {
        "consolidated_epochs": len(consolidated.meta["history"]),
        "home_epochs": len(home_only.meta["history"]),
        "rows": prepared.manifest["rows"],
    }

    models = {name: summary(v) for name, v in results.items()}
    differences: dict[str, dict[str, Any]] = {}
    for name, values in results.items():
        if name == "monorec_consolidated":
            continue
        differences[name] = {}
        for metric in values:
            d = paired_bootstrap(results["monorec_consolidated"][metric], values[metric], seed=args.seed)
            differences[name][metric] = d.to_dict()
    for name, m in models.items():
        print(f"{name:>22}  " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    write_record(
        args.out,
        {
            "benchmark": "Q3",
            "quick": args.quick,
            "data": args.data,
            "seed": args.seed,
            "k": K,
            "protocol": "ratings>=3, 10-core, leave-last-out, full ranking excluding earlier items",
            "dataset": dataset,
            "models": models,
            "differences": differences,
            "notes": notes,
            "seconds": time.perf_counter() - started,
        },
    )


if __name__ == "__main__":
    main()
