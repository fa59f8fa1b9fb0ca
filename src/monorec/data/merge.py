"""Stratified merge of per-canvas training labels with configured mixture proportions.

A large canvas must not drown a small one: each canvas gets ``mix / sum(mix)`` of the merged training
rows. A canvas with more rows than its share gives the rows of smallest seeded hash (a sample without
replacement); one with fewer repeats every row ``share // available`` times and the rows of smallest hash
once more (an upsample whose copies differ by at most one). The merged rows are ordered by a seeded hash
of their request (within buckets of ``labels.bucket_rows`` rows when there are more), so that a request's
rows stay together (its context is encoded once) and any run of rows, e.g. a shard read by training, is
a random sample of requests. Hashes, not a random generator: the same rows in memory or streamed give
the same merge. The realised mixture is returned so that it is recorded in the manifest and saved with
the model.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from monorec.config import ProjectConfig
from monorec.data.frame_engine import FrameEngine, columns

__all__ = ["merge_plan", "stratified_merge"]


def stratified_merge(
    train: dict[str, pl.DataFrame], config: ProjectConfig, *, total_rows: int | None = None, seed: int = 0
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Merges per-canvas training frames in the configured proportions, in memory (see :func:`merge_plan`).

    Args:
        train: canvas -> its training rows (only canvases of ``config`` are used).
        config: supplies each canvas's ``mix``.
        total_rows: size of the merged set (default: the sum of the available rows).
        seed: sampling seed.

    Returns:
        (merged rows, mixture record ``{canvas: {available, rows, share, target_share, replacement}}``).
    """
    lazy = {name: frame.lazy() for name, frame in train.items()}
    merged, record = merge_plan(lazy, config, FrameEngine(), total_rows=total_rows, seed=seed)
    return merged.collect(), record


def merge_plan(
    train: dict[str, pl.LazyFrame],
    config: ProjectConfig,
    engine: FrameEngine,
    *,
    total_rows: int | None = None,
    seed: int = 0,
) -> tuple[pl.LazyFrame, dict[str, Any]]:
    """The stratified merge, holding at most a bucket of rows (``labels.bucket_rows``) at a time.

    Each canvas's sample is the rows whose hash is at most its ``rest``-th smallest (one column of hashes
    in memory, not the rows); the merged rows are then written a bucket of requests at a time, each bucket
    ordered by (request hash, part, row): one bucket, by request hash, when the rows fit in one.
    """
    available = {
        c.name: int(engine.collect(train[c.name].select(pl.len())).item()) for c in config.canvases if c.name in train
    }
    canvases = [c for c in config.canvases if available.get(c.name, 0) > 0]
    if not canvases:  # no training rows at all (a short log): an empty merge, reported by the manifest
        empty = next(iter(train.values())).clear() if train else pl.LazyFrame()
        return empty, {}
    total = total_rows or sum(available[c.name] for c in canvases)
    mix_sum = sum(c.mix for c in canvases)
    parts: list[pl.LazyFrame] = []
    record: dict[str, Any] = {}
    for i, c in enumerate(canvases):
        target = max(1, round(total * c.mix / mix_sum))
        copies, rest = divmod(target, available[c.name])
        frame = train[c.name].with_row_index("_row")
        if rest:
            hashed = frame.select(pl.col("_row").hash(seed=seed + i).alias("_hash"))
            cut = engine.collect(hashed.bottom_k(rest, by="_hash").select(pl.col("_hash").max())).item()
            sampled = frame.filter(pl.col("_row").hash(seed=seed + i) <= cut)
        for part in [frame] * copies + ([sampled] if rest else []):
            parts.append(part.with_columns(pl.lit(len(parts), dtype=pl.UInt32).alias("_part")))
        record[c.name] = {
            "available": available[c.name],
            "rows": target,
            "target_share": c.mix / mix_sum,
            "replacement": target > available[c.name],
        }
    merged = pl.concat(parts)
    if "request_id" in columns(merged):
        order = pl.col("request_id").hash(seed=seed)
    else:
        order = pl.struct("_part", "_row").hash(seed=seed)
    merged = merged.with_columns(order.alias("_order"))
    total_merged = sum(r["rows"] for r in record.values())
    buckets = max(1, -(-total_merged // config.labels.bucket_rows))
    pieces = []
    cut = engine.partition(merged, pl.col("_order") % buckets, buckets, "merged", batch_rows=config.labels.bucket_rows)
    for b, piece in enumerate(cut):  # (request, part, row): a total order, whichever engine ran the parts
        rows = engine.collect(piece).sort("_order", "_part", "_row").drop("_order", "_part", "_row")
        pieces.append(engine.spill(rows, f"merged-{b}"))
    for entry in record.values():
        entry["share"] = entry["rows"] / total_merged
    return pl.concat(pieces), record
