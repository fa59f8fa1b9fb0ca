"""Stratified merge of per-canvas training labels with configured mixture proportions.

A large canvas must not drown a small one: each canvas gets ``mix / sum(mix)`` of the merged training
rows, downsampled without replacement or upsampled with replacement (seeded). The realised mixture is
returned so that it is recorded in the manifest and saved with the model.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from monorec.config import ProjectConfig

__all__ = ["stratified_merge"]


def stratified_merge(
    train: dict[str, pl.DataFrame], config: ProjectConfig, *, total_rows: int | None = None, seed: int = 0
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Merges per-canvas training frames in the configured proportions.

    Args:
        train: canvas -> its training rows (only canvases of ``config`` are used).
        config: supplies each canvas's ``mix``.
        total_rows: size of the merged set (default: the sum of the available rows).
        seed: sampling seed.

    Returns:
        (merged rows shuffled, mixture record ``{canvas: {available, rows, share, target_share, replacement}}``).
    """
    canvases = [c for c in config.canvases if c.name in train and train[c.name].height > 0]
    if not canvases:  # no training rows at all (a short log): an empty merge, reported by the manifest
        empty = next(iter(train.values())).clear() if train else pl.DataFrame()
        return empty, {}
    available = {c.name: train[c.name].height for c in canvases}
    total = total_rows or sum(available.values())
    mix_sum = sum(c.mix for c in canvases)
    parts, record = [], {}
    for i, c in enumerate(canvases):
        target = max(1, round(total * c.mix / mix_sum))
        replace = target > available[c.name]
        part = train[c.name].sample(n=target, with_replacement=replace, shuffle=True, seed=seed + i)
        parts.append(part)
        record[c.name] = {
            "available": available[c.name],
            "rows": target,
            "target_share": c.mix / mix_sum,
            "replacement": replace,
        }
    merged = pl.concat(parts).sample(fraction=1.0, shuffle=True, seed=seed)
    for entry in record.values():
        entry["share"] = entry["rows"] / merged.height
    return merged, record
