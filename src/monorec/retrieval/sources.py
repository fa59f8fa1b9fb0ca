"""The candidate sources of one model version, and what each reads from a request.

Each canvas declares its sources and how many candidates each proposes (``[canvases.X] sources``): the
``embedding`` source is the version's vector index (or, offline, the exact dot product over the
catalogue); the others live here, fitted on the training period only and saved with the version:

- ``lexical``: BM25 of the canvas's text field (the query) over entity titles and categories (tantivy);
- ``cooccurrence``: neighbours of the request's entities (the source item, then the history, most recent
  first) in the training responses;
- ``popular``: the most responded-to entities of the canvas, per the most specific categorical value of
  the request that has a list (``PopularLists``: e.g. the browsed category, else the country).

Scores are on each source's own scale: BM25 (or, with ``sources.lexical_score = "relative"``, BM25 over
the request's best match's), ``log1p`` of the co-occurrence strength, and for popular
``1 - rank / len(list)``; an entity a source did not propose has no score from it (the ranking treats that
as 0, the bottom of every scale).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from monorec.config import SOURCE_NAMES, ProjectConfig
from monorec.popular import PopularLists
from monorec.retrieval.cooccurrence import CooccurrenceTable
from monorec.retrieval.lexical import LexicalIndex, LexicalSource
from monorec.retrieval.proposals import SourceProposals

__all__ = ["OFFLINE_SOURCES", "CandidateSources", "Proposals"]

OFFLINE_SOURCES = ("lexical", "cooccurrence", "popular")  # every source but the embedding index

# per request: (entity id, score) best first
Proposals = list[list[tuple[str, float]]]


class CandidateSources:
    """The lexical, co-occurrence and popular sources of one version (see the module docstring)."""

    def __init__(
        self,
        config: ProjectConfig,
        lexical: LexicalSource,
        cooccurrence: CooccurrenceTable,
        popular: PopularLists,
    ) -> None:
        self.config, self.lexical, self.cooccurrence, self.popular = config, lexical, cooccurrence, popular
        # the sources answered by another process (Qdrant's sparse vectors), which may stall: serving waits
        # for them only so long; the in-process ones answer in well under a millisecond
        self.remote: set[str] = set() if isinstance(lexical, LexicalIndex) else {"lexical"}

    @classmethod
    def fit(
        cls,
        config: ProjectConfig,
        responses: pl.DataFrame,
        catalogue: pl.DataFrame,
        popular: PopularLists,
        *,
        lexical_path: str | Path | None = None,
    ) -> CandidateSources:
        """Fits co-occurrence on the TRAINING ``responses`` and indexes the catalogue's text."""
        return cls(config, index_catalogue(catalogue, lexical_path), fit_cooccurrence(config, responses), popular)

    # -------------------------------------------------------------------------------- what they read

    def query_of(self, canvas: str, record: Mapping[str, Any]) -> str | None:
        """The text the lexical source searches with: the canvas's first non-empty text field."""
        for name in self.config.canvas(canvas).fields:
            if self.config.field(name).kind == "text" and record.get(name):
                return str(record[name])
        return None

    def seeds_of(self, canvas: str, record: Mapping[str, Any]) -> list[str]:
        """The entities co-occurrence starts from, most recent first: the entity id fields (the source
        item), then each entity history newest first."""
        fields = [self.config.field(n) for n in self.config.canvas(canvas).fields]
        entities = [f for f in fields if f.vocabulary == "entity" and record.get(f.name)]
        seeds = [str(record[f.name]) for f in entities if f.kind == "id"]
        for f in entities:
            if f.kind == "id_list":
                value = record[f.name]
                items = value.split("|") if isinstance(value, str) else [str(v) for v in value]
                seeds.extend(reversed([i for i in items if i]))
        return seeds

    # ------------------------------------------------------------------------------------- proposing

    def propose(self, source: str, canvas: str, records: Sequence[Mapping[str, Any]], depth: int) -> Proposals:
        """Up to ``depth`` candidates from one offline source for each normalized record of ``canvas``."""
        if source == "lexical":
            found = self.lexical.search([self.query_of(canvas, r) for r in records], depth)
            if self.config.sources.lexical_score == "relative":  # best first: the first score is the top
                found = [[(e, v / hits[0][1]) for e, v in hits] if hits and hits[0][1] > 0 else hits for hits in found]
            return found
        if source == "cooccurrence":
            out_c: Proposals = [[] for _ in records]
            vocab = self.cooccurrence.vocab
            for r, row, score in zip(*self._cooccurrence(canvas, records, depth), strict=True):
                out_c[int(r)].append((vocab[int(row)], float(score)))
            return out_c
        if source == "popular":
            out: Proposals = []
            for r in records:
                ids, _ = self.popular.lookup(canvas, r)
                ids = ids[:depth]
                out.append([(e, 1.0 - i / len(ids)) for i, e in enumerate(ids)])
            return out
        raise ValueError(f"unknown offline source {source!r} (known: {', '.join(OFFLINE_SOURCES)})")

    def _cooccurrence(
        self,
        canvas: str,
        records: Sequence[Mapping[str, Any]],
        depth: int,
        users: Sequence[str | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(request (M,), vocab row (M,), score (M,)) of the co-occurrence source: ``log1p`` of the strength
        from the requests' seeds (the one place that scale is defined)."""
        seeds = self.cooccurrence.seed_rows([self.seeds_of(canvas, r) for r in records])
        req, row, strength = self.cooccurrence.propose_rows(seeds, depth, users)
        return req, row, np.log1p(strength)

    def proposals(
        self,
        canvases: Sequence[str],
        records: Sequence[Mapping[str, Any]],
        position_of: Mapping[str, int],
        *,
        users: Sequence[str | None] | None = None,
    ) -> SourceProposals:
        """Every declared offline source's proposals for each request (``canvases[i]``, ``records[i]``), as
        a table over the catalogue whose entity ids ``position_of`` maps to positions (ids it lacks are
        dropped). ``users`` (one per request) leaves each user's own co-occurrence counts out: the scores of
        a TRAINING request (see ``monorec.retrieval.cooccurrence``)."""
        parts: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]] = []  # (request, position, column, score)
        by_canvas: dict[str, list[int]] = {}
        for i, canvas in enumerate(canvases):
            by_canvas.setdefault(canvas, []).append(i)
        for canvas, members in by_canvas.items():
            depths = self.config.canvas(canvas).sources
            rows = [records[i] for i in members]
            at = np.asarray(members, dtype=np.int64)
            if "cooccurrence" in depths:
                vocab_position = np.array([position_of.get(e, -1) for e in self.cooccurrence.vocab], dtype=np.int64)
                who = [users[i] for i in members] if users is not None else None
                req, row, score = self._cooccurrence(canvas, rows, depths["cooccurrence"], who)
                parts.append((at[req], vocab_position[row], SOURCE_NAMES.index("cooccurrence"), score))
            for source in ("lexical", "popular"):
                if source not in depths:
                    continue
                cache: dict[object, list[tuple[str, float]]] = {}  # many requests share a query / a list
                req_l: list[int] = []
                found: list[tuple[str, float]] = []
                for j, record in enumerate(rows):
                    if source == "lexical":
                        key: object = self.query_of(canvas, record)
                    else:
                        key = self.popular.lookup(canvas, record)[1]
                    if key not in cache:
                        cache[key] = self.propose(source, canvas, [record], depths[source])[0]
                    req_l.extend([j] * len(cache[key]))
                    found.extend(cache[key])
                positions = np.array([position_of.get(e, -1) for e, _ in found], dtype=np.int64)
                scores = np.array([v for _, v in found], dtype=np.float64)
                parts.append((at[np.array(req_l, dtype=np.int64)], positions, SOURCE_NAMES.index(source), scores))
        request = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        return SourceProposals.from_rows(
            request,
            np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=np.int64),
            np.concatenate([np.full(len(p[0]), p[2]) for p in parts]) if parts else np.zeros(0, dtype=np.int64),
            np.concatenate([p[3] for p in parts]) if parts else np.zeros(0),
            n_entities=max(len(position_of), 1),
            n_requests=len(records),
            n_sources=len(SOURCE_NAMES),
        )

    def close(self) -> None:
        self.lexical.close()


def fit_cooccurrence(config: ProjectConfig, responses: pl.DataFrame, *, keep_own: bool = False) -> CooccurrenceTable:
    """The co-occurrence table of the TRAINING ``responses`` with the project's window and size."""
    spec = config.sources
    return CooccurrenceTable.fit(
        responses, window=spec.cooccurrence_window, top_n=spec.cooccurrence_top_n, keep_own=keep_own
    )


def index_catalogue(catalogue: pl.DataFrame, path: str | Path | None = None) -> LexicalIndex:
    """A lexical index of every catalogue entity (in memory, or in ``path``)."""
    index = LexicalIndex(path)
    cols = catalogue.select("entity_id", "title", "categories")
    index.upsert(cols["entity_id"].to_list(), cols["title"].to_list(), cols["categories"].to_list())
    return index
