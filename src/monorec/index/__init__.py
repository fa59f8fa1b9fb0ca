"""Vector indexes of item embeddings, one per deployed model version.

``create_index`` builds an empty index from the config's ``[index]`` table; ``save_index`` writes it into
a checksummed folder (with the caller's metadata, e.g. the change-log offset it reflects; in two steps,
capture then write, with ``start_save_index``) and
``load_index`` reads it back after verifying every file, so a missing or corrupt index fails loudly.
Backends: :class:`~monorec.index.faiss_index.FaissIndex` (exact or HNSW, in process),
:class:`~monorec.index.hnswlib_index.HnswlibIndex` (hnswlib's HNSW, in process; both on
:class:`~monorec.index.row_index.RowIndex`) and :class:`~monorec.index.qdrant_index.QdrantIndex` (a Qdrant
collection per version).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monorec.artifacts import atomic_dir, staging_dir, verify_manifest
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
    "start_save_index",
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


Finish = Callable[[], None]  # the second step of a two-step save: writes what its first step captured


def save_index(
    index: VectorIndex,
    path: str | Path,
    *,
    spec: IndexSpec,
    meta: dict[str, Any],
    attach: Callable[[Path], list[Finish]] | None = None,
) -> None:
    """Writes ``index`` atomically into ``path`` (replacing an older checkpoint) with ``meta`` in its manifest;
    ``attach(folder)`` may write more files into it (covered by the same checksums), or capture what it
    writes later and return the functions that do (see :func:`start_save_index`)."""
    start_save_index(index, path, spec=spec, meta=meta, attach=attach)()


def start_save_index(
    index: VectorIndex,
    path: str | Path,
    *,
    spec: IndexSpec,
    meta: dict[str, Any],
    attach: Callable[[Path], list[Finish]] | None = None,
) -> Finish:
    """:func:`save_index` in two steps: captures the index (and what ``attach`` captures) as they are now,
    into memory or a staging folder beside ``path``, and returns the function that writes the capture and
    swaps the folder in. That function may run on another thread while writes go on (a loader's
    checkpoint, whose capture is ~1/5 of the whole); if it is never called, the staging folder is what
    :func:`~monorec.artifacts.recover_dirs` removes."""
    manifest = {"kind": "index", "index": spec.kind, "dim": index.dim, "entities": len(index), **meta}
    staged = staging_dir(path)
    try:
        parts = [index.start_save(staged), *(attach(staged) if attach is not None else ())]
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise

    def finish() -> None:
        with atomic_dir(path, manifest=manifest, staged=staged):
            for part in parts:
                part()

    return finish


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
