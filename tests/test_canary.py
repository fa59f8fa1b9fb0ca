"""The canary a version passes before it may serve: its index's recall@10 against exact search over its own
entities (``monorec.deployment.checks``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from monorec.config import IndexSpec
from monorec.deployment.checks import canary_recall, exact_kth_scores
from monorec.index import EntityRows, Hits, create_index


def _version(index: object, queries: int = 50) -> SimpleNamespace:
    return SimpleNamespace(
        index=index, bundle=SimpleNamespace(config=SimpleNamespace(deploy=SimpleNamespace(canary_queries=queries)))
    )


def _filled(kind: str, n: int, tmp_path) -> object:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = create_index(IndexSpec(kind=kind), 16, name="canary", root=tmp_path)
    index.upsert(
        EntityRows(
            ids=[f"e{i}" for i in range(n)],
            types=["movie"] * n,
            categories=[()] * n,
            revisions=np.zeros(n, dtype=np.int64),
            vectors=vectors,
        )
    )
    return index


@pytest.mark.parametrize("n", [7, 10, 1000])
def test_the_exact_kth_score_is_the_same_in_chunks_as_over_the_whole_matrix(n: int) -> None:
    rng = np.random.default_rng(n)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    k = min(10, n)
    whole = torch.topk(torch.from_numpy(queries) @ torch.from_numpy(vectors).T, k, dim=1).values[:, -1].numpy()
    for chunk in (3, 64, 100_000):
        np.testing.assert_allclose(exact_kth_scores(queries, vectors, k, chunk=chunk), whole, rtol=0, atol=1e-6)


def test_an_exact_index_passes_the_canary_and_one_that_answers_wrongly_fails_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    index = _filled("exact", 2000, tmp_path)
    assert canary_recall(_version(index)) == 1.0

    class Shuffled:
        """The same index, whose searches answer other entities than the nearest."""

        def __getattr__(self, name: str) -> object:
            return getattr(index, name)

        def search(self, queries: np.ndarray, k: int, where: object = None) -> Hits:
            hits = index.search(queries, k + 500)
            return Hits(hits.ids[:, 500:], hits.scores[:, 500:])

    assert canary_recall(_version(Shuffled())) < 0.05
