"""Per-canvas evaluation on a split: Recall@K / NDCG@K over the full catalogue (retrieval then ranking)
and AUC / log loss (binary) or RMSE (regression) per objective."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import torch

from monorec.bundle import ModelBundle, context_tensors
from monorec.config import ProjectConfig
from monorec.data.prepared import PreparedData
from monorec.evaluation.metrics import auc, log_loss, ndcg_at_k, recall_at_k, rmse
from monorec.evaluation.recommenders import ModelRecommender, Recommender
from monorec.evaluation.requests import RequestSet, build_requests, entity_positions, seen_by_user
from monorec.retrieval.sources import CandidateSources

__all__ = ["evaluate_bundle", "evaluate_objectives", "evaluate_recommender", "request_sets"]


def request_sets(
    config: ProjectConfig, prepared: PreparedData, split: str, *, max_requests: int | None = None
) -> dict[str, RequestSet]:
    """Evaluation requests of every canvas of ``config`` on ``split``; seeded, identical for every
    recommender evaluated on them."""
    ev = config.evaluate
    train = prepared.scan("train")
    known = None
    if "user_id" in train.collect_schema().names():
        users = train.select(pl.col("user_id").drop_nulls().unique()).collect(engine="streaming")
        known = set(users["user_id"].to_list())
    seen = None
    if ev.exclude_seen:
        asking = None  # the users the split's requests come from: only theirs are looked up
        if "user_id" in prepared.scan(split).collect_schema().names():
            split_users = prepared.scan(split).select(pl.col("user_id").drop_nulls().unique())
            asking = split_users.collect(engine="streaming")["user_id"].to_list()
        seen = seen_by_user(prepared.responses("train", ["user_id", "entity_id"]), prepared.catalogue, asking)
    context_columns = [f.name for f in config.fields]
    # the entity a request is about (related's source item) is never an answer; a history (id_list) is
    # not a source: what it holds is excluded, or not, by ``exclude_seen`` like any earlier response
    entity_fields = [f.name for f in config.fields if f.vocabulary == "entity" and f.kind == "id"]
    out = {}
    for c in config.canvases:
        rows = prepared.rows(split, (c.name,))
        source = next((f for f in entity_fields if f in c.fields), None)
        out[c.name] = build_requests(
            rows,
            prepared.catalogue,
            canvas=c.name,
            primary_column=config.objective(c.primary).column,
            context_columns=context_columns,
            seen=seen if c.name in ev.exclude_seen else None,
            exclude_source_field=source,
            known_users=known,
            max_requests=ev.max_requests if max_requests is None else max_requests,
            seed=ev.seed,
        )
    return out


def evaluate_recommender(
    recommender: Recommender, requests: dict[str, RequestSet], k: int
) -> dict[str, dict[str, Any]]:
    """canvas -> {"recall@k", "ndcg@k", "requests", "coverage@k", "cold": {...}, "warm": {...},
    "per_request": {...}, "requests_fingerprint"} (means over requests).

    ``coverage@k`` is the share of the catalogue that appears in any answer; ``cold`` and ``warm`` hold the
    same metrics on the cold-start slice (users never seen in training) and on the rest; ``per_request``
    keeps every request's values (and its cold flag) so that two reports on the same requests
    (same ``requests_fingerprint``) can be compared with paired confidence intervals
    (:mod:`monorec.evaluation.compare`).
    """
    out: dict[str, dict[str, Any]] = {}
    for canvas, reqs in requests.items():
        if len(reqs) == 0:
            out[canvas] = {f"recall@{k}": float("nan"), f"ndcg@{k}": float("nan"), "requests": 0}
            continue
        topk = recommender.recommend(reqs, k)
        recall = recall_at_k(topk, reqs.relevant, k)
        ndcg = ndcg_at_k(topk, reqs.relevant, k)
        out[canvas] = {
            f"recall@{k}": float(recall.mean()),
            f"ndcg@{k}": float(ndcg.mean()),
            "requests": len(reqs),
            f"coverage@{k}": len(np.unique(topk)) / recommender.catalogue_size,
            "cold": _slice(recall, ndcg, reqs.cold, k),
            "warm": _slice(recall, ndcg, ~reqs.cold, k),
            "requests_fingerprint": reqs.fingerprint(),
            "per_request": {
                f"recall@{k}": [round(float(x), 6) for x in recall],
                f"ndcg@{k}": [round(float(x), 6) for x in ndcg],
                "cold": reqs.cold.astype(int).tolist(),
            },
        }
    return out


def _slice(recall: np.ndarray, ndcg: np.ndarray, mask: np.ndarray, k: int) -> dict[str, Any]:
    """The metrics on the requests selected by ``mask`` (NaN when there are none)."""
    some = bool(mask.any())
    return {
        f"recall@{k}": float(recall[mask].mean()) if some else float("nan"),
        f"ndcg@{k}": float(ndcg[mask].mean()) if some else float("nan"),
        "requests": int(mask.sum()),
    }


@torch.no_grad()
def evaluate_objectives(
    bundle: ModelBundle,
    rows: pl.DataFrame,
    catalogue: pl.DataFrame,
    *,
    encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
    sources: CandidateSources | None = None,
    batch_size: int = 4096,
) -> dict[str, dict[str, float]]:
    """Pointwise metrics of each objective head the canvas declares, on logged (and sampled) rows, each
    scored with the source inputs its request would get (what the canvas's sources propose for it).

    ``encoded``: the catalogue's (features (N, F_i), embeddings (N, D)) when the caller has them already;
    ``sources``: the version's candidate sources, when the caller has them (else built from the bundle).
    """
    model, fz, cfg = bundle.model.eval(), bundle.featurizer, bundle.config
    device = next(model.parameters()).device
    item_feats, item_embs = encoded if encoded is not None else bundle.item_embeddings(catalogue)
    positions = entity_positions(catalogue, rows["entity_id"])
    rows = rows.filter(pl.Series(positions >= 0))
    positions = positions[positions >= 0]
    labels = fz.transform_labels(rows)
    proposals = None
    if model.source_columns and rows.height:
        own = sources is None
        sources = sources if sources is not None else bundle.candidate_sources(catalogue)
        position_of = {e: i for i, e in enumerate(catalogue["entity_id"].to_list())}
        proposals = sources.proposals(rows["canvas"].to_list(), rows.to_dicts(), position_of).to(device)
        if own:
            sources.close()
    preds = []
    for start in range(0, rows.height, batch_size):
        ctx = context_tensors(fz.transform_context(rows.slice(start, batch_size)), device)
        idx = torch.as_tensor(positions[start : start + batch_size], device=device)
        cf, ce = model.encode_context(ctx)
        feats = None
        if proposals is not None:
            feats = proposals.lookup(torch.arange(start, start + len(idx), device=device), idx)
        logits = model.rank(cf, ce, item_feats[idx], item_embs[idx], ctx["task_type"], feats)
        preds.append(logits.cpu().numpy())
    logits_all = np.concatenate(preds) if preds else np.zeros((0, len(cfg.objectives)))
    out: dict[str, dict[str, float]] = {}
    canvas = rows["canvas"][0] if rows.height else None
    declared = cfg.canvas(canvas).objectives if canvas in cfg.canvas_names else ()
    for j, o in enumerate(cfg.objectives):
        if o.name not in declared:
            continue
        seen = ~np.isnan(labels[:, j])
        if not seen.any():
            continue
        y, s = labels[seen, j], logits_all[seen, j]
        if o.kind == "binary":
            p = 1.0 / (1.0 + np.exp(-s))
            out[o.name] = {"auc": auc(y, s), "logloss": log_loss(y, p), "rows": int(seen.sum())}
        else:
            out[o.name] = {"rmse": rmse(y, s), "rows": int(seen.sum())}
    return out


def evaluate_bundle(
    bundle: ModelBundle, prepared: PreparedData, split: str = "test", requests: dict[str, RequestSet] | None = None
) -> dict[str, Any]:
    """The full per-canvas report of a model on a split (what ``monorec evaluate`` writes)."""
    cfg = bundle.config
    k = cfg.evaluate.k
    reqs = requests or request_sets(cfg, prepared, split)
    recommender = ModelRecommender(bundle, prepared.catalogue, depth=cfg.evaluate.retrieval_depth)
    ranked = evaluate_recommender(recommender, reqs, k)
    retrieval = evaluate_recommender(recommender.retrieval_only(), reqs, k)
    encoded = (recommender.item_feats, recommender.item_embs)  # the catalogue is encoded once
    canvases = {}
    for c in cfg.canvases:
        rows = prepared.rows(split, (c.name,))
        canvases[c.name] = {
            **ranked[c.name],
            "retrieval_only": {m: v for m, v in retrieval[c.name].items() if m in (f"recall@{k}", f"ndcg@{k}")},
            "candidate_recall": recommender.candidate_recall(reqs[c.name]) if len(reqs[c.name]) else {},
            # the fusion weights chosen on validation (and validation NDCG with and without them)
            "source_weights": bundle.meta.get("source_weights", {}).get(c.name, {}),
            "objectives": evaluate_objectives(
                bundle, rows, prepared.catalogue, encoded=encoded, sources=recommender.sources
            )
            if rows.height
            else {},
        }
    return {"split": split, "k": k, "model": {"checksum": bundle.checksum()}, "canvases": canvases}
