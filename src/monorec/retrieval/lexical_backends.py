"""A deployed version's lexical index, by the config's ``index.lexical``: created empty for a new version,
or reopened from the version's checkpoint (``indexes/vNNNN/lexical``) after a restart.

- ``tantivy``: a working folder per version, started from the checkpoint's copy of the index files (what
  was written after the checkpoint is dropped: the change log replays it from the checkpoint's offset);
- ``qdrant``: sparse vectors in the version's collection; the checkpoint holds the average field lengths
  its weights use (like the dense vectors, the collection itself may be ahead of the checkpoint).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl

from monorec.config import IndexSpec
from monorec.errors import ArtifactError
from monorec.index import VectorIndex
from monorec.retrieval.lexical import LexicalIndex, LexicalSource

__all__ = ["create_lexical", "load_lexical"]


def create_lexical(
    spec: IndexSpec, index: VectorIndex, folder: Path, sample: Callable[[], pl.DataFrame]
) -> LexicalSource:
    """An empty lexical index for a new version whose vector index is ``index``; ``folder`` is tantivy's
    working folder (emptied), ``sample()`` catalogue rows (title, categories) that set Qdrant's average
    field lengths (read only for Qdrant)."""
    if spec.lexical == "qdrant":
        from monorec.index.qdrant_index import QdrantIndex
        from monorec.retrieval.qdrant_lexical import QdrantLexical, average_lengths

        assert isinstance(index, QdrantIndex)  # the config refuses lexical = "qdrant" without kind = "qdrant"
        rows = sample()
        return QdrantLexical(index, average_lengths(rows["title"].to_list(), rows["categories"].to_list()))
    shutil.rmtree(folder, ignore_errors=True)
    return LexicalIndex(folder)


def load_lexical(spec: IndexSpec, saved: Path, index: VectorIndex, folder: Path, entities: int) -> LexicalSource:
    """The lexical index of a checkpoint (``saved``), beside its loaded vector index.

    Args:
        entities: how many entities the checkpoint holds (tantivy's copy must hold as many).

    Raises:
        ArtifactError: the checkpoint has no lexical index, or one that does not open or disagrees.
    """
    if spec.lexical == "qdrant":
        from monorec.index.qdrant_index import QdrantIndex
        from monorec.retrieval.qdrant_lexical import QdrantLexical

        assert isinstance(index, QdrantIndex)
        return QdrantLexical.restore(saved, index)
    lexical = LexicalIndex.restore(saved, folder)
    if len(lexical) != entities:
        lexical.close()
        raise ArtifactError(f"{saved}: the lexical index holds {len(lexical)} entities, the checkpoint {entities}")
    return lexical
