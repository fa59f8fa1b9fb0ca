"""What a version must show before it may serve: its stores equal the catalogue and the users table at
one log offset, and its index answers canary queries like exact search (step 4 of
:mod:`monorec.deployment.lifecycle`).
"""

from __future__ import annotations

import numpy as np
import torch

from monorec.deployment.version import ServingVersion
from monorec.errors import DeployError
from monorec.stream.catalogue import CatalogueStore
from monorec.users import user_key

__all__ = ["canary_recall", "check_stores", "exact_kth_scores"]


def check_stores(version: str, sv: ServingVersion, catalogue: CatalogueStore) -> None:
    """The version's vector index holds exactly the catalogue (every id at its latest revision), its lexical
    index the same entities, its user store every known user, and its index's recall
    against exact search reaches ``deploy.canary_min_recall``.

    Raises:
        DeployError: naming the store and what differs.
    """
    expected = catalogue.revisions()
    got = sv.index.revisions()
    if got != expected:
        missing = len(expected.keys() - got.keys())
        extra = len(got.keys() - expected.keys())
        stale = sum(1 for e, r in got.items() if e in expected and expected[e] != r)
        raise DeployError(
            f"{version}: index holds {len(got)} entities, the catalogue {len(expected)} "
            f"({missing} missing, {extra} extra, {stale} at another revision)"
        )
    texts = sv.sources.lexical.ids()
    if texts != expected.keys():
        raise DeployError(
            f"{version}: the lexical index holds {len(texts)} entities, the catalogue {len(expected)} "
            f"({len(expected.keys() - texts)} missing, {len(texts - expected.keys())} extra)"
        )
    _check_users(version, sv, catalogue)
    recall = canary_recall(sv)
    minimum = sv.bundle.config.deploy.canary_min_recall
    if recall < minimum:
        raise DeployError(f"{version}: canary recall@10 {recall:.3f} < {minimum} against exact search")


def _check_users(version: str, sv: ServingVersion, catalogue: CatalogueStore) -> None:
    """The version's user store holds every known user at its latest revision in each user canvas."""
    if sv.users is None or not sv.user_canvases:
        return
    expected = catalogue.user_revisions()
    got = sv.users.revisions()
    for canvas in sv.user_canvases:
        prefix = user_key(canvas, "")
        held = {k[len(prefix) :]: r for k, r in got.items() if k.startswith(prefix)}
        if held != expected:
            missing = len(expected.keys() - held.keys())
            stale = sum(1 for u, r in held.items() if u in expected and expected[u] != r)
            raise DeployError(
                f"{version}: the user store holds {len(held)} users for {canvas}, the users table "
                f"{len(expected)} ({missing} missing, {stale} at another revision)"
            )


def canary_recall(sv: ServingVersion, k: int = 10, seed: int = 0) -> float:
    """Recall@k of the version's index against exact search, for catalogue entities as queries.

    Tie-aware: a hit counts when its exact score reaches the exact k-th score (entities with identical
    features, e.g. cold ones with the same title, have identical embeddings)."""
    ids = sorted(sv.index.revisions())
    if not ids:
        return 1.0
    rng = np.random.default_rng(seed)
    n = min(len(ids), sv.bundle.config.deploy.canary_queries)
    k = min(k, len(ids))
    probe = [ids[i] for i in rng.choice(len(ids), n, replace=False)]
    queries = sv.index.vectors_of(probe)
    kth = exact_kth_scores(queries, sv.index.vectors_of(ids), k)
    hits = sv.index.search(queries, k)
    found = 0
    for q in range(n):
        returned = [e for e, _ in hits.row(q)]
        if not returned:
            continue
        true_scores = sv.index.vectors_of(returned) @ queries[q]  # re-scored, not the index's own claim
        found += int((true_scores >= kth[q] - 1e-5).sum())
    return found / (n * k)


def exact_kth_scores(queries: np.ndarray, vectors: np.ndarray, k: int, chunk: int = 65_536) -> np.ndarray:
    """The k-th best inner product of each query over every vector: queries (Q, D), vectors (N, D), k <= N
    -> (Q,). A chunk of vectors at a time, keeping each query's best k so far: the whole (Q, N) score matrix
    would be 800 MB for 200 queries over 1M entities, written and read again by the top-k."""
    q = torch.from_numpy(queries)
    best: torch.Tensor | None = None
    for start in range(0, len(vectors), chunk):
        scores = q @ torch.from_numpy(vectors[start : start + chunk]).T  # (Q, chunk)
        if best is not None:
            scores = torch.cat([best, scores], dim=1)
        best = torch.topk(scores, min(k, scores.shape[1]), dim=1).values
    assert best is not None and best.shape[1] == k, "k exceeds the number of vectors"
    return best[:, -1].numpy()
