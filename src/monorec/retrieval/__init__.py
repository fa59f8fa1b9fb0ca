"""Candidate sources: what proposes the entities that the ranker orders (see ``monorec.retrieval.sources``)."""

from monorec.retrieval.cooccurrence import CooccurrenceTable
from monorec.retrieval.lexical import LexicalIndex
from monorec.retrieval.sources import OFFLINE_SOURCES, CandidateSources, Proposals

__all__ = ["OFFLINE_SOURCES", "CandidateSources", "CooccurrenceTable", "LexicalIndex", "Proposals"]
