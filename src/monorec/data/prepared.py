"""The prepare stage's artifact: per-canvas labels with the time split, the merged training set, the
catalogue and a manifest (inputs, config, row counts per canvas and split, what cleaning dropped, the
mixture). Written atomically; every later stage reads it and can be rerun alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from monorec.artifacts import atomic_dir, verify_manifest
from monorec.config import ProjectConfig
from monorec.data.labels import prepare_labels
from monorec.data.merge import stratified_merge
from monorec.errors import ArtifactError

__all__ = ["PreparedData", "prepare"]


@dataclass
class PreparedData:
    catalogue: pl.DataFrame
    canvases: dict[str, pl.DataFrame]  # canvas -> labelled rows with a ``split`` column
    merged_train: pl.DataFrame
    manifest: dict[str, Any]

    def rows(self, split: str, canvases: tuple[str, ...] | None = None) -> pl.DataFrame:
        """All rows of one split (of some canvases), concatenated."""
        names = canvases or tuple(self.canvases)
        return pl.concat([self.canvases[c].filter(pl.col("split") == split) for c in names if c in self.canvases])

    def responses(self, split: str) -> pl.DataFrame:
        """Rows of one split where their canvas's primary objective is 1, over EVERY prepared canvas: what
        users consumed is a fact of the data, whichever canvases a model is trained on."""
        primary = self.manifest["primary_columns"]
        return pl.concat(
            [f.filter((pl.col("split") == split) & (pl.col(primary[c]) == 1)) for c, f in self.canvases.items()]
        )

    @property
    def empty_canvases(self) -> list[str]:
        """Declared canvases without training rows (see the manifest)."""
        return list(self.manifest.get("empty_canvases", []))

    def merged(self, canvases: tuple[str, ...]) -> pl.DataFrame:
        """The merged training rows of some canvases (a dedicated model trains on exactly the rows of its
        canvas that the consolidated model trains on)."""
        return self.merged_train.filter(pl.col("canvas").is_in(list(canvases)))

    def save(self, path: str | Path) -> Path:
        with atomic_dir(path, manifest=self.manifest) as tmp:
            self.catalogue.write_parquet(tmp / "catalogue.parquet")
            (tmp / "labels").mkdir()
            for name, frame in self.canvases.items():
                frame.write_parquet(tmp / "labels" / f"{name}.parquet")
            self.merged_train.write_parquet(tmp / "train_merged.parquet")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> PreparedData:
        path = Path(path)
        manifest = verify_manifest(path)
        if manifest.get("kind") != "prepared":
            raise ArtifactError(f"{path}: not a prepared-data directory (kind={manifest.get('kind')!r})")
        canvases = {name: pl.read_parquet(path / "labels" / f"{name}.parquet") for name in manifest["canvases"]}
        return cls(
            pl.read_parquet(path / "catalogue.parquet"),
            canvases,
            pl.read_parquet(path / "train_merged.parquet"),
            manifest,
        )


def inputs_handled(config: ProjectConfig, canvases: dict[str, pl.DataFrame], catalogue: pl.DataFrame) -> dict[str, Any]:
    """What the featurizer will handle by a sentinel or a truncation, counted so that it is seen, not
    silent: per canvas and history (``id_list``) field, the rows without any history, with ids the
    catalogue does not hold (the unknown index), and longer than the field keeps (the oldest dropped);
    the entities without a title (the learned "no text" vector)."""
    known = catalogue["entity_id"].implode()
    out: dict[str, Any] = {
        "entities_without_title": int(catalogue["title"].fill_null("").str.strip_chars().eq("").sum())
    }
    for name, frame in canvases.items():
        spec = config.canvas(name)
        for f in config.fields:
            if f.kind != "id_list" or f.name not in spec.fields or f.name not in frame.columns:
                continue
            ids = frame[f.name].fill_null("").str.split("|").list.eval(pl.element().filter(pl.element() != ""))
            out[f"{name}.{f.name}"] = {
                "rows": frame.height,
                "empty": int((ids.list.len() == 0).sum()),
                "with_unknown_ids": int(ids.list.eval(~pl.element().is_in(known)).list.any().sum()),
                "truncated": int((ids.list.len() > f.max_tokens).sum()),
            }
    return out


def prepare(
    config: ProjectConfig, catalogue: pl.DataFrame, logs: pl.DataFrame, *, inputs: dict[str, Any] | None = None
) -> PreparedData:
    """Label preparation per canvas, time split, stratified merge of the training split."""
    labels = prepare_labels(logs, catalogue, config)
    train = {name: frame.filter(pl.col("split") == "train") for name, frame in labels.canvases.items()}
    cap = config.train.max_train_rows or None
    merged, mixture = stratified_merge(train, config, total_rows=cap, seed=config.train.seed)
    manifest = {
        "kind": "prepared",
        "config": config.name,
        "inputs": inputs or {},
        "canvases": list(labels.canvases),
        "primary_columns": {c.name: config.objective(c.primary).column for c in config.canvases},
        "rows": labels.counts(),
        "dropped": labels.dropped,
        "cutoffs": {"first_valid_ts": labels.cutoffs[0], "first_test_ts": labels.cutoffs[1]},
        "mixture": mixture,
        "merged_rows": merged.height,
        # declared canvases this data has no training rows for (MovieLens without tags: no search): reported,
        # and skipped wherever a model would be trained or compared on them alone
        "empty_canvases": [name for name, frame in train.items() if frame.height == 0],
        "inputs_handled": inputs_handled(config, labels.canvases, catalogue),
        "sample_weights": labels.sample_weights,
    }
    return PreparedData(catalogue, labels.canvases, merged, manifest)
