"""A new version's bulk pass on Ray Data: the catalogue encoded by a pool of actors.

The deployment writes the catalogue snapshot it is loading (the live entities after the bulk cursor, in id
order) as Parquet blocks; Ray Data reads them and hands batches to a pool of actors that each load the
version's item tower from the registry once; the encodings stream back in id order (``preserve_order``)
to the deployment, which writes the version's index, item features and lexical index exactly as the
in-process pass does (:func:`monorec.deployment.staging.bulk_load`): the same cursors and checkpoints, the
same validation before the version is ready, so a half-built version never serves and a killed deploy
resumes after its last checkpoint (re-exporting what remains). An actor that dies is restarted by Ray and
its batch retried; a batch that keeps failing fails the pass loudly and the version stays staging.

The registry and the deployment folder must be readable from every Ray node (a shared filesystem, as for
replicas on several hosts); on one machine they simply are.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from monorec._failpoints import failpoint
from monorec.deployment.version import ItemEncodings
from monorec.distributed.session import import_ray
from monorec.stream.catalogue import CatalogueStore

__all__ = ["RayBulkEmbedder"]

VECTOR, FEATURES = "vector", "features"  # the columns the actors add to each batch


class RayBulkEmbedder:
    """Encodes a version's catalogue pages on Ray (an ``EntityPages`` for ``Deployment.deploy``).

    Args:
        registry: the registry folder (every Ray node reads the version from it).
        version: the version being staged.
        scratch: where the Parquet blocks are written (emptied before, removed after).
        workers: actors in the pool, each with one CPU and ``threads`` torch threads.
        block_rows: at most this many rows per block (the unit of Ray Data's reads, of an actor's work
            and of retries); fewer when the catalogue is small, so that every actor gets blocks.
    """

    def __init__(
        self,
        registry: str | Path,
        version: str,
        scratch: str | Path,
        *,
        workers: int = 2,
        block_rows: int = 50_000,
        threads: int = 1,
    ) -> None:
        if workers < 1 or block_rows < 1 or threads < 1:
            raise ValueError(f"workers, block_rows and threads must be >= 1, got {workers}, {block_rows}, {threads}")
        self.registry, self.version, self.scratch = str(Path(registry).resolve()), version, Path(scratch)
        self.workers, self.block_rows, self.threads = workers, block_rows, threads

    def __call__(
        self, catalogue: CatalogueStore, after: str, size: int
    ) -> Iterator[tuple[pl.DataFrame, ItemEncodings]]:
        """The entities after ``after`` in id order, ``size`` per page, with their encodings."""
        # at least two blocks per actor where the catalogue allows, at most block_rows rows each
        rows = max(1, min(self.block_rows, -(-catalogue.count() // (2 * self.workers))))
        blocks = self._export(catalogue, after, rows)
        if not blocks:
            return
        import_ray()  # a clear error when Ray is missing
        import ray.data as ray_data

        ray_data.DataContext.get_current().execution_options.preserve_order = True  # id order: the cursor
        # blocks of ``rows`` again (a read task may merge small files into one block, which one actor would
        # then encode alone; streaming, so memory stays bounded); an actor pool's actors are restarted when
        # they die and their batches retried (Ray Data's defaults: max_restarts and max_task_retries -1)
        dataset = ray_data.read_parquet([str(b) for b in blocks])
        dataset = dataset.repartition(target_num_rows_per_block=rows).map_batches(
            _ItemTower,
            fn_constructor_kwargs={"registry": self.registry, "version": self.version, "threads": self.threads},
            compute=ray_data.ActorPoolStrategy(size=self.workers),
            batch_size=size,
            batch_format="pyarrow",
            num_cpus=1,
            runtime_env=_failpoints_env(),
        )
        for batch in dataset.iter_batches(batch_size=size, batch_format="pyarrow"):
            yield _split(batch)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _export(self, catalogue: CatalogueStore, after: str, rows: int) -> list[Path]:
        """The live entities after ``after`` as Parquet blocks of ``rows``, named in id order."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        blocks: list[Path] = []
        while True:
            page = catalogue.page(after, rows)
            if page.height == 0:
                return blocks
            blocks.append(self.scratch / f"part-{len(blocks):06d}.parquet")
            page.write_parquet(blocks[-1])
            after = str(page["entity_id"][-1])


class _ItemTower:
    """One actor of the pool: the version's item tower, loaded once; a batch of catalogue rows in, the same
    rows with their ``vector`` (D,) and ``features`` (F_i,) columns out."""

    def __init__(self, registry: str, version: str, threads: int) -> None:
        import torch

        from monorec.registry import Registry

        torch.set_num_threads(threads)
        self.bundle = Registry(registry).load(version)

    def __call__(self, batch: Any) -> Any:
        failpoint("ray_embed_batch")  # tests kill an actor here
        feats, embs = self.bundle.item_embeddings(pl.from_arrow(batch))  # type: ignore[arg-type]
        encoded = batch.append_column(VECTOR, _fixed_size(embs.numpy()))
        return encoded.append_column(FEATURES, _fixed_size(feats.numpy()))


def _failpoints_env() -> dict[str, Any] | None:
    """The test failpoints of this process (:mod:`monorec._failpoints`), passed on to the actors."""
    names = ("MONOREC_KILL_AT", "MONOREC_KILL_ONCE")
    env = {name: os.environ[name] for name in names if os.environ.get(name)}
    return {"env_vars": env} if env else None


def _fixed_size(matrix: np.ndarray) -> Any:
    """(N, W) float32 -> an Arrow column of N fixed-size lists of W."""
    import pyarrow as pa

    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def _split(batch: Any) -> tuple[pl.DataFrame, ItemEncodings]:
    """An encoded batch -> (its catalogue rows, their encodings)."""

    def matrix(name: str) -> np.ndarray:
        column = batch.column(name).combine_chunks()
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(column), column.type.list_size).astype(np.float32, copy=False)

    page = pl.from_arrow(batch.drop_columns([VECTOR, FEATURES]))
    assert isinstance(page, pl.DataFrame)
    return page, ItemEncodings(matrix(VECTOR), matrix(FEATURES))
