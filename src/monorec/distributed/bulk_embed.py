"""A new version's bulk pass on Ray Data: the catalogue and the users encoded by a pool of actors.

The deployment writes the snapshot it is loading (the live entities after the bulk cursor, then the users
after the user cursor, in id order) as Parquet blocks; Ray Data reads them and hands batches to a pool of
actors that each load the version from the registry once (its item tower, then its context tower for each
user canvas); the encodings stream back in id order (``preserve_order``) to the deployment, which writes
the version's index, item features, lexical index and user store exactly as the in-process pass does
(:func:`monorec.deployment.staging.bulk_load`): the same cursors and checkpoints, the same validation
before the version is ready, so a half-built version never serves and a killed deploy resumes after its
last checkpoint (re-exporting what remains). An actor that dies is restarted by Ray and
its batch retried; a batch that keeps failing fails the pass loudly and the version stays staging.

The registry and the deployment folder must be readable from every Ray node (a shared filesystem, as for
replicas on several hosts); on one machine they simply are.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from monorec._failpoints import failpoint
from monorec.deployment.version import ItemEncodings
from monorec.distributed.session import block_rows, failpoints_env, import_ray
from monorec.stream.catalogue import CatalogueStore
from monorec.stream.changes import UserChange
from monorec.users.encode import user_rows

__all__ = ["RayBulkEmbedder"]

VECTOR, FEATURES, ROWS = "vector", "features", "rows"  # the columns the actors add to each batch


class RayBulkEmbedder:
    """Encodes a version's catalogue and users on Ray (a ``BulkEncoder`` for ``Deployment.deploy``).

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

    def entities(
        self, catalogue: CatalogueStore, after: str, size: int
    ) -> Iterator[tuple[pl.DataFrame, ItemEncodings]]:
        """The entities after ``after`` in id order, ``size`` per page, with their encodings."""
        rows = block_rows(catalogue.count(), self.workers, self.block_rows)
        blocks = self._export(lambda cursor: catalogue.page(cursor, rows), first=after)
        tower = {"registry": self.registry, "version": self.version, "threads": self.threads}
        for batch in self._encode(blocks, rows, size, _ItemTower, tower):
            yield _split_entities(batch)

    def users(self, catalogue: CatalogueStore, after: str, size: int) -> Iterator[tuple[list[UserChange], np.ndarray]]:
        """The users after ``after`` in id order, ``size`` per page, with their rows of every user canvas
        (canvas-major, as ``ServingVersion.load_users`` takes them)."""
        rows = block_rows(catalogue.user_count(), self.workers, self.block_rows)
        blocks = self._export(lambda cursor: _user_page(catalogue, cursor, rows), key="user_id", first=after)
        tower = {"registry": self.registry, "version": self.version, "threads": self.threads}
        tower["catalogue"] = str(catalogue.path)
        from monorec.registry import Registry

        canvases = len(Registry(self.registry).config(self.version).deploy.user_canvases)
        for batch in self._encode(blocks, rows, size, _ContextTower, tower):
            yield _split_users(batch, canvases)

    def _encode(self, blocks: list[Path], rows: int, size: int, actor: type, kwargs: dict[str, Any]) -> Iterator[Any]:
        """The blocks through a pool of ``actor``s, as Arrow batches of ``size`` rows in block order."""
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
            actor,
            fn_constructor_kwargs=kwargs,
            compute=ray_data.ActorPoolStrategy(size=self.workers),
            batch_size=size,
            batch_format="pyarrow",
            num_cpus=1,
            runtime_env=failpoints_env(),
        )
        yield from dataset.iter_batches(batch_size=size, batch_format="pyarrow")
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _export(self, page: Callable[[str], pl.DataFrame], *, key: str = "entity_id", first: str = "") -> list[Path]:
        """``page(after)`` from ``first`` on as Parquet blocks named in id order (``key`` the id column)."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        blocks: list[Path] = []
        after = first
        while (frame := page(after)).height:
            blocks.append(self.scratch / f"part-{len(blocks):06d}.parquet")
            frame.write_parquet(blocks[-1])
            after = str(frame[key][-1])
        return blocks


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


def _fixed_size(matrix: np.ndarray) -> Any:
    """(N, W) float32 -> an Arrow column of N fixed-size lists of W."""
    import pyarrow as pa

    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


class _ContextTower:
    """One actor of the users' pool: the version's context tower, loaded once; a batch of users' states in,
    the same rows with their ``rows`` column out: each user's row of every user canvas, side by side."""

    def __init__(self, registry: str, version: str, threads: int, catalogue: str) -> None:
        import torch

        from monorec.registry import Registry

        torch.set_num_threads(threads)
        self.bundle = Registry(registry).load(version)
        self.canvases = self.bundle.config.deploy.user_canvases
        store = CatalogueStore(catalogue)  # titles, for the schema's imputation rules
        self.titles = lambda entity_id: store.titles([entity_id]).get(entity_id)

    def __call__(self, batch: Any) -> Any:
        failpoint("ray_embed_batch")
        states = _states(batch)
        rows = user_rows(self.bundle, [(c, s) for c in self.canvases for s in states], self.titles)
        side_by_side = rows.reshape(len(self.canvases), len(states), -1).transpose(1, 0, 2).reshape(len(states), -1)
        return batch.append_column(ROWS, _fixed_size(side_by_side))


def _user_page(catalogue: CatalogueStore, after: str, limit: int) -> pl.DataFrame:
    """Users' states after ``after`` as a frame (profile and history as JSON text)."""
    states = catalogue.user_page(after, limit)
    return pl.DataFrame(
        {
            "user_id": [s.user_id for s in states],
            "revision": [s.revision for s in states],
            "profile": [json.dumps([list(p) for p in s.profile]) for s in states],
            "history": [json.dumps(list(s.history)) for s in states],
        },
        schema={"user_id": pl.String, "revision": pl.Int64, "profile": pl.String, "history": pl.String},
    )


def _states(batch: Any) -> list[UserChange]:
    columns = batch.select(["user_id", "revision", "profile", "history"]).to_pydict()
    return [
        UserChange(u, r, tuple((k, v) for k, v in json.loads(p)), tuple(json.loads(h)))
        for u, r, p, h in zip(
            columns["user_id"], columns["revision"], columns["profile"], columns["history"], strict=True
        )
    ]


def _matrix(batch: Any, name: str) -> np.ndarray:
    """A fixed-size-list column -> (N, W) float32."""
    column = batch.column(name).combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), column.type.list_size).astype(np.float32, copy=False)


def _split_entities(batch: Any) -> tuple[pl.DataFrame, ItemEncodings]:
    """An encoded batch of entities -> (its catalogue rows, their encodings)."""
    page = pl.from_arrow(batch.drop_columns([VECTOR, FEATURES]))
    assert isinstance(page, pl.DataFrame)
    return page, ItemEncodings(_matrix(batch, VECTOR), _matrix(batch, FEATURES))


def _split_users(batch: Any, canvases: int) -> tuple[list[UserChange], np.ndarray]:
    """An encoded batch of N users -> (their states, their rows canvas-major: (canvases * N, W))."""
    states = _states(batch)
    side_by_side = _matrix(batch, ROWS)  # (N, canvases * W)
    n = len(states)
    return states, side_by_side.reshape(n, canvases, -1).transpose(1, 0, 2).reshape(canvases * n, -1)
