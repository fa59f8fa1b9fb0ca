"""Vector indexes of item embeddings, one per deployed model version.

``create_index`` builds an empty index from the config's ``[index]`` table; ``save_index`` writes it into
a checksummed folder (with the caller's metadata, e.g. the change-log offset it reflects) and
``load_index`` reads it back after verifying every file, so a missing or corrupt index fails loudly.
Backends: :class:`~monorec.index.faiss_index.FaissIndex` (exact or HNSW, in process),
:class:`~monorec.index.hnswlib_index.HnswlibIndex` (hnswlib's HNSW, in process; both on
:class:`~monorec.index.row_index.RowIndex`) and :class:`~monorec.index.qdrant_index.QdrantIndex` (a Qdrant
collection per version).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monorec.artifacts import atomic_dir, verify_manifest
from monorec.config import IndexSpec
from monorec.errors import ArtifactError
from monorec.index.base import EntityFilter, EntityRows, Hits, VectorIndex
from monorec.index.faiss_index import FaissIndex

__all__ = [
    "EntityFilter",
    "EntityRows",
    "Hits",
    "VectorIndex",
    "create_index",
    "load_index",
    "release_local_indexes",
    "save_index",
]


def _local_params(spec: IndexSpec) -> dict[str, Any]:
    return {
        "hnsw_m": spec.hnsw_m,
        "ef_construction": spec.ef_construction,
        "ef_search": spec.ef_search,
        "exact_below": spec.exact_below,
        "compact_above": spec.compact_above,
    }


def _qdrant_location(spec: IndexSpec, root: Path) -> str:
    return spec.qdrant_url or str(root / "qdrant")  # see release_local_indexes


def create_index(spec: IndexSpec, dim: int, *, name: str, root: str | Path) -> VectorIndex:
    """An empty index for version ``name``; ``root`` holds local state (Qdrant's local mode folder)."""
    if spec.kind == "qdrant":
        from monorec.index.qdrant_index import QdrantIndex  # optional engine: imported only when configured

        return QdrantIndex(dim, location=_qdrant_location(spec, Path(root)), collection=f"monorec_{name}")
    if spec.kind == "hnswlib":
        from monorec.index.hnswlib_index import HnswlibIndex  # optional library: imported only when configured

        return HnswlibIndex(dim, **_local_params(spec))
    return FaissIndex(dim, kind=spec.kind, **_local_params(spec))


def save_index(
    index: VectorIndex,
    path: str | Path,
    *,
    spec: IndexSpec,
    meta: dict[str, Any],
    attach: Callable[[Path], None] | None = None,
) -> None:
    """Writes ``index`` atomically into ``path`` (replacing an older checkpoint) with ``meta`` in its manifest;
    ``attach(folder)`` may write more files into it (covered by the same checksums)."""
    manifest = {"kind": "index", "index": spec.kind, "dim": index.dim, "entities": len(index), **meta}
    with atomic_dir(path, manifest=manifest) as tmp:
        index.save(tmp)
        if attach is not None:
            attach(tmp)


def load_index(path: str | Path, *, spec: IndexSpec, name: str, root: str | Path) -> tuple[VectorIndex, dict[str, Any]]:
    """Reads an index saved by :func:`save_index`; returns it and its manifest.

    Raises:
        ArtifactError: the folder is missing, incomplete, modified, or holds another kind of index.
    """
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: index folder missing")
    manifest = verify_manifest(path)
    if manifest.get("kind") != "index" or manifest.get("index") != spec.kind:
        raise ArtifactError(f"{path}: holds a {manifest.get('index')!r} index, the config asks for {spec.kind!r}")
    dim = int(manifest["dim"])
    index: VectorIndex
    if spec.kind == "qdrant":
        from monorec.index.qdrant_index import QdrantIndex

        index = QdrantIndex.load(path, dim, location=_qdrant_location(spec, Path(root)), collection=f"monorec_{name}")
    elif spec.kind == "hnswlib":
        from monorec.index.hnswlib_index import HnswlibIndex

        index = HnswlibIndex.load(path, dim, **_local_params(spec))
    else:
        index = FaissIndex.load(path, dim, spec.kind, **_local_params(spec))
    if len(index) != manifest["entities"] and spec.kind != "qdrant":
        raise ArtifactError(f"{path}: holds {len(index)} entities, its manifest says {manifest['entities']}")
    return index, manifest


def release_local_indexes(root: str | Path) -> None:
    """Frees what this process holds of the indexes kept under ``root`` (Qdrant's local-mode folder: one
    process at a time may open it), so that the next owner of the folder can."""
    if "monorec.index.qdrant_index" in sys.modules:  # never imports qdrant-client for a faiss deployment
        from monorec.index.qdrant_index import close_qdrant_client

        close_qdrant_client(str(Path(root) / "qdrant"))
