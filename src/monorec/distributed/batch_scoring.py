"""Batch scoring on Ray Data: the precomputed tables of an environment (top-K per user, source item or
category; :mod:`monorec.serving.precomputed`) scored by a pool of actors.

The driver writes the keys to score as Parquet blocks; Ray Data hands batches of them to actors that each
open the version once, frozen at the owner's newest checkpoint
(:class:`~monorec.deployment.snapshot.VersionSnapshot`: index, item features, lexical index, user
encodings, the ranker), and answer them through the same model path as online requests (rules included);
the answers stream back to the driver, which writes the table (``monorec precompute --ray``). An actor that
dies is restarted by Ray and its batch retried; a batch that keeps failing fails the job loudly, and no
table is written (a table is complete or absent).

The registry and the deployment folder must be readable from every Ray node (a shared filesystem, as for
replicas on several hosts); on one machine they simply are.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from monorec._failpoints import failpoint
from monorec.distributed.session import block_rows, failpoints_env, import_ray

__all__ = ["RayTableScorer"]

ITEMS = "items"  # the column the actors add to each batch: the key's answer, JSON


class RayTableScorer:
    """Scores precomputed tables on Ray.

    Args:
        root: the owner's deployment folder.
        registry: the registry folder.
        version: the version that scores (a ready, serving or standby one).
        env: the environment's name; ``config``: the TOML it comes from (default: the registry's newest
            version's config), resolved again in each actor (``Registry.environment``).
        scratch: where the key blocks and the actors' snapshots go (emptied before, removed after).
        workers: actors in the pool, each with one CPU and ``threads`` torch threads.
        block_rows: keys per block (the unit of reads and retries); fewer when there are few keys, so
            that every actor gets blocks.
    """

    def __init__(
        self,
        root: str | Path,
        registry: str | Path,
        version: str,
        env: str,
        scratch: str | Path,
        *,
        config: str | Path | None = None,
        workers: int = 2,
        block_rows: int = 20_000,
        threads: int = 1,
    ) -> None:
        if workers < 1 or block_rows < 1 or threads < 1:
            raise ValueError(f"workers, block_rows and threads must be >= 1, got {workers}, {block_rows}, {threads}")
        self.scratch = Path(scratch)
        self.actor_kwargs = {
            "root": str(Path(root).resolve()),
            "registry": str(Path(registry).resolve()),
            "version": version,
            "env": env,
            "config": None if config is None else str(Path(config).resolve()),
            "threads": threads,
            "work": str((self.scratch / "actors").resolve()),
        }
        self.workers, self.block_rows = workers, block_rows

    def rows(self, keys: Sequence[tuple[str, str, list[str]]]) -> Iterator[tuple[str, str, bytes]]:
        """(canvas, key, answer JSON) of every key of ``keys`` ((canvas, field, values) per table)."""
        frame = pl.DataFrame(
            {
                "canvas": [c for c, _, values in keys for _ in values],
                "field": [f for _, f, values in keys for _ in values],
                "key": [v for _, _, values in keys for v in values],
            },
            schema={"canvas": pl.String, "field": pl.String, "key": pl.String},
        )
        if not frame.height:
            return
        import_ray()  # a clear error when Ray is missing
        import ray.data as ray_data

        shutil.rmtree(self.scratch, ignore_errors=True)
        (self.scratch / "keys").mkdir(parents=True)
        rows = block_rows(frame.height, self.workers, self.block_rows)
        blocks = []
        for i, start in enumerate(range(0, frame.height, rows)):
            blocks.append(str(self.scratch / "keys" / f"part-{i:06d}.parquet"))
            frame.slice(start, rows).write_parquet(blocks[-1])
        try:
            # an actor pool's actors are restarted when they die and their batches retried (Ray Data's
            # defaults: max_restarts and max_task_retries -1); blocks of ``rows`` again, so every actor works
            dataset = ray_data.read_parquet(blocks).repartition(target_num_rows_per_block=rows)
            scored = dataset.map_batches(
                _TableScorer,
                fn_constructor_kwargs=self.actor_kwargs,
                compute=ray_data.ActorPoolStrategy(size=self.workers),
                batch_size=rows,  # a block per call: the unit of work and of retries (scored 256 keys at a time)
                batch_format="pyarrow",
                num_cpus=1,
                runtime_env=failpoints_env(),
            )
            for out in scored.iter_batches(batch_size=rows, batch_format="pyarrow"):
                yield from _rows(out)
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _rows(batch: Any) -> Iterator[tuple[str, str, bytes]]:
    """A scored Arrow batch -> its (canvas, key, answer JSON) rows."""
    columns = batch.select(["canvas", "key", ITEMS]).to_pydict()
    return zip(columns["canvas"], columns["key"], columns[ITEMS], strict=True)


class _TableScorer:
    """One actor of the pool: the version frozen at its checkpoint, opened once; a batch of keys (canvas,
    field, key) in, the same rows with their answer (``items``, JSON) out."""

    def __init__(self, root: str, registry: str, version: str, env: str, config: str | None, threads: int, work: str):
        import torch

        from monorec.deployment.snapshot import VersionSnapshot
        from monorec.registry import Registry
        from monorec.serving.model_path import ModelPath

        torch.set_num_threads(threads)
        reg = Registry(registry)
        self.snapshot = VersionSnapshot(root, reg, version, work=Path(work) / uuid.uuid4().hex)
        self.model = ModelPath(self.snapshot, reg.environment(env, config))

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from monorec.serving.precomputed import score_keys

        failpoint("ray_score_batch")  # tests kill an actor here
        columns = batch.select(["canvas", "field", "key"]).to_pydict()
        answers: list[bytes] = [b""] * batch.num_rows
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (canvas, field) in enumerate(zip(columns["canvas"], columns["field"], strict=True)):
            groups.setdefault((canvas, field), []).append(i)
        version = self.snapshot.version
        for (canvas, field), rows in groups.items():
            values = [columns["key"][i] for i in rows]
            for i, items in zip(rows, score_keys(self.model, version, canvas, field, values), strict=True):
                answers[i] = items
        return batch.append_column(ITEMS, pa.array(answers, pa.binary()))
