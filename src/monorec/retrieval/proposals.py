"""The offline sources' proposals for a set of requests, as sorted arrays: the union a ranker orders, and
the source scores it reads as input features (the same numbers in training, evaluation and serving).

A proposal is (request, entity): the entity's score from each offline source that proposed it for that
request (``SOURCE_NAMES`` order; column 0, the embedding source, is the retrieval score, known for every
entity, and stays 0 here). An entity no source proposed has no row: its scores are the sentinel 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SourceProposals"]


@dataclass(frozen=True)
class SourceProposals:
    """Proposals of Q requests over a catalogue of N entities.

    Attributes:
        keys: (M,) int64, sorted: ``request * n_entities + catalogue position``.
        scores: (M, S) float32 source scores of each proposal.
        n_entities: N.
        n_requests: Q.
    """

    keys: torch.Tensor
    scores: torch.Tensor
    n_entities: int
    n_requests: int

    @classmethod
    def from_rows(
        cls,
        request: np.ndarray,
        position: np.ndarray,
        column: np.ndarray,
        score: np.ndarray,
        *,
        n_entities: int,
        n_requests: int,
        n_sources: int,
    ) -> SourceProposals:
        """One row per (request, entity, source) proposal (M,) each -> the table (an entity proposed by
        several sources gets one row with several scores; rows with a negative position are dropped)."""
        ok = position >= 0
        keys = request[ok].astype(np.int64) * n_entities + position[ok].astype(np.int64)
        unique, inverse = np.unique(keys, return_inverse=True)
        scores = np.zeros((len(unique), n_sources), dtype=np.float32)
        scores[inverse, column[ok]] = score[ok]
        return cls(torch.from_numpy(unique), torch.from_numpy(scores), n_entities, n_requests)

    def to(self, device: torch.device | str) -> SourceProposals:
        return SourceProposals(self.keys.to(device), self.scores.to(device), self.n_entities, self.n_requests)

    def lookup(self, request: torch.Tensor, entity: torch.Tensor) -> torch.Tensor:
        """(B,) request indices, (B,) catalogue positions -> (B, S) scores (0: not proposed; an entity
        position < 0, padding, gets 0 too)."""
        out = torch.zeros(len(request), self.scores.shape[1], device=self.scores.device)
        if len(self.keys) == 0 or len(request) == 0:
            return out
        probe = request.to(torch.int64) * self.n_entities + entity.to(torch.int64)
        at = torch.searchsorted(self.keys, probe).clamp(max=len(self.keys) - 1)
        hit = (self.keys[at] == probe) & (entity >= 0)
        out[hit] = self.scores[at[hit]]
        return out

    def bounds(self, request: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) request indices -> (start (B,), count (B,)): each request's proposals are
        ``keys[start:start + count]`` (their positions: ``keys % n_entities``)."""
        start = torch.searchsorted(self.keys, request.to(torch.int64) * self.n_entities)
        end = torch.searchsorted(self.keys, (request.to(torch.int64) + 1) * self.n_entities)
        return start, end - start

    def positions(self, request: int) -> np.ndarray:
        """Catalogue positions proposed for one request, in position order."""
        start, count = self.bounds(torch.tensor([request], device=self.keys.device))
        s, n = int(start[0]), int(count[0])
        return (self.keys[s : s + n] % self.n_entities).cpu().numpy()

    def sample(self, request: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
        """(B,) request indices -> (B, k) catalogue positions drawn uniformly (with replacement) from each
        request's proposals; -1 where a request has none."""
        start, count = self.bounds(request)
        u = torch.rand(len(request), k, generator=generator).to(self.keys.device)
        at = start[:, None] + (u * count[:, None]).long()
        picked = self.keys[at.clamp(max=max(len(self.keys) - 1, 0))] % self.n_entities if len(self.keys) else at
        return torch.where(count[:, None] > 0, picked, torch.full_like(picked, -1))
