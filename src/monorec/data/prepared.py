"""The prepare stage's artifact: per-canvas labels with the time split, the merged training set, the
catalogue and a manifest (inputs, config, row counts per canvas and split, what cleaning dropped, the
mixture). Written atomically; every later stage reads it and can be rerun alone."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from monorec.artifacts import atomic_dir, verify_manifest
from monorec.config import ProjectConfig
from monorec.data.frame_engine import FrameEngine, columns
from monorec.data.labels import SPLITS, LabelPlan, label_plan
from monorec.data.merge import merge_plan
from monorec.data.tables import validated_log_parts
from monorec.errors import ArtifactError

__all__ = ["PreparedData", "prepare", "prepare_streaming"]


class PreparedData:
    """The prepared data: ``catalogue``, ``canvases`` (canvas -> labelled rows with a ``split`` column),
    ``merged_train`` (the stratified merge of the training split) and the ``manifest``.

    Loaded (:meth:`load`) its tables are in memory; opened (:meth:`open`) they stay Parquet scans, and
    the lazy accessors (:meth:`scan`, :meth:`merged_scan`, :meth:`rows`, :meth:`responses`) read only
    what is asked: what training does for data larger than memory. ``canvases`` and ``merged_train``
    read a table whole the first time they are used.
    """

    def __init__(
        self,
        catalogue: pl.DataFrame,
        canvases: Mapping[str, pl.DataFrame | pl.LazyFrame],
        merged_train: pl.DataFrame | pl.LazyFrame,
        manifest: dict[str, Any],
    ) -> None:
        self.catalogue = catalogue
        self.manifest = manifest
        self._scans = {name: frame.lazy() for name, frame in canvases.items()}
        self._merged_scan = merged_train.lazy()
        # the tables held whole (all of them when built in memory; those asked for when opened)
        self._frames = {name: frame for name, frame in canvases.items() if isinstance(frame, pl.DataFrame)}
        self._merged = merged_train if isinstance(merged_train, pl.DataFrame) else None

    @property
    def canvases(self) -> dict[str, pl.DataFrame]:
        """canvas -> all its labelled rows, in memory."""
        for name, scan in self._scans.items():
            if name not in self._frames:
                self._frames[name] = scan.collect()
        return dict(self._frames)

    @property
    def merged_train(self) -> pl.DataFrame:
        if self._merged is None:
            self._merged = self._merged_scan.collect()
        return self._merged

    @property
    def held_in_memory(self) -> list[str]:
        """Which tables are held whole (canvas names, and "merged"): what a streaming reader must not load."""
        return [*self._frames, *(["merged"] if self._merged is not None else [])]

    def scan(self, split: str, canvases: tuple[str, ...] | None = None) -> pl.LazyFrame:
        """The rows of one split (of some canvases), concatenated, as a lazy frame."""
        names = canvases or tuple(self._scans)
        return pl.concat([self._scans[c].filter(pl.col("split") == split) for c in names if c in self._scans])

    def rows(self, split: str, canvases: tuple[str, ...] | None = None) -> pl.DataFrame:
        """All rows of one split (of some canvases), concatenated."""
        return self.scan(split, canvases).collect()

    def responses(self, split: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """Rows of one split where their canvas's primary objective is 1, over EVERY prepared canvas: what
        users consumed is a fact of the data, whichever canvases a model is trained on.

        Args:
            columns: only these of the rows' columns (those the prepared data has), read from the scans
                alone: what a fit over the responses needs, without the histories and text it ignores.
        """
        primary = self.manifest["primary_columns"]
        parts = [f.filter((pl.col("split") == split) & (pl.col(primary[c]) == 1)) for c, f in self._scans.items()]
        if columns is not None:
            present = set(next(iter(self._scans.values())).collect_schema().names()) if self._scans else set()
            parts = [f.select([c for c in dict.fromkeys(columns) if c in present]) for f in parts]
        return pl.concat(parts).collect()

    @property
    def empty_canvases(self) -> list[str]:
        """Declared canvases without training rows (see the manifest)."""
        return list(self.manifest.get("empty_canvases", []))

    def merged_scan(self, canvases: tuple[str, ...]) -> pl.LazyFrame:
        """The merged training rows of some canvases as a lazy frame, in their merged order."""
        if set(canvases) >= set(self._scans):  # all of them: no filter, so that a slice reads only its rows
            return self._merged_scan
        return self._merged_scan.filter(pl.col("canvas").is_in(list(canvases)))

    def merged(self, canvases: tuple[str, ...]) -> pl.DataFrame:
        """The merged training rows of some canvases (a dedicated model trains on exactly the rows of its
        canvas that the consolidated model trains on)."""
        return self.merged_scan(canvases).collect()

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
        """Reads a prepared-data folder into memory."""
        opened = cls.open(path)
        return cls(opened.catalogue, opened.canvases, opened.merged_train, opened.manifest)

    @classmethod
    def open(cls, path: str | Path) -> PreparedData:
        """Opens a prepared-data folder (its manifest and files verified) without reading its rows: the
        tables are Parquet scans, read as they are asked for."""
        path = Path(path)
        manifest = verify_manifest(path)
        if manifest.get("kind") != "prepared":
            raise ArtifactError(f"{path}: not a prepared-data directory (kind={manifest.get('kind')!r})")
        canvases = {name: pl.scan_parquet(path / "labels" / f"{name}.parquet") for name in manifest["canvases"]}
        merged = pl.scan_parquet(path / "train_merged.parquet")
        return cls(pl.read_parquet(path / "catalogue.parquet"), canvases, merged, manifest)


def inputs_handled(
    config: ProjectConfig,
    canvases: dict[str, pl.LazyFrame],
    catalogue: pl.DataFrame,
    engine: FrameEngine | None = None,
) -> dict[str, Any]:
    """What the featurizer will handle by a sentinel or a truncation, counted so that it is seen, not
    silent: per canvas and history (``id_list``) field, the rows without any history, with ids the
    catalogue does not hold (the unknown index), and longer than the field keeps (the oldest dropped);
    the entities without a title (the learned "no text" vector)."""
    engine = engine or FrameEngine()
    known = catalogue["entity_id"].implode()
    out: dict[str, Any] = {
        "entities_without_title": int(catalogue["title"].fill_null("").str.strip_chars().eq("").sum())
    }
    for name, frame in canvases.items():
        spec = config.canvas(name)
        fields = [
            f for f in config.fields if f.kind == "id_list" and f.name in spec.fields and f.name in columns(frame)
        ]
        if not fields:
            continue
        aggregates = [pl.len().alias("rows")]
        for f in fields:
            ids = pl.col(f.name).fill_null("").str.split("|").list.eval(pl.element().filter(pl.element() != ""))
            aggregates += [
                (ids.list.len() == 0).sum().alias(f"{f.name}:empty"),
                ids.list.eval(~pl.element().is_in(known)).list.any().sum().alias(f"{f.name}:with_unknown_ids"),
                (ids.list.len() > f.max_tokens).sum().alias(f"{f.name}:truncated"),
            ]
        counts = engine.collect(frame.select(aggregates)).row(0, named=True)
        for f in fields:
            out[f"{name}.{f.name}"] = {
                "rows": int(counts["rows"]),
                **{what: int(counts[f"{f.name}:{what}"]) for what in ("empty", "with_unknown_ids", "truncated")},
            }
    return out


def _manifest(
    config: ProjectConfig,
    labels: LabelPlan,
    catalogue: pl.DataFrame,
    mixture: dict[str, Any],
    engine: FrameEngine,
    inputs: dict[str, Any] | None,
) -> dict[str, Any]:
    """The prepared data's manifest (each count one pass over the canvases' rows)."""
    rows = {
        name: {
            split: int(n)
            for split, n in engine.collect(frame.select(*(((pl.col("split") == s).sum()).alias(s) for s in SPLITS)))
            .row(0, named=True)
            .items()
        }
        for name, frame in labels.canvases.items()
    }
    return {
        "kind": "prepared",
        "config": config.name,
        "inputs": inputs or {},
        "canvases": list(labels.canvases),
        "primary_columns": {c.name: config.objective(c.primary).column for c in config.canvases},
        "rows": rows,
        "dropped": labels.dropped,
        "cutoffs": {"first_valid_ts": labels.cutoffs[0], "first_test_ts": labels.cutoffs[1]},
        "mixture": mixture,
        "merged_rows": sum(int(m["rows"]) for m in mixture.values()),
        # declared canvases this data has no training rows for (MovieLens without tags: no search): reported,
        # and skipped wherever a model would be trained or compared on them alone
        "empty_canvases": [name for name, counts in rows.items() if counts["train"] == 0],
        "inputs_handled": inputs_handled(config, labels.canvases, catalogue, engine),
        "sample_weights": labels.sample_weights,
        "engine": "streaming" if engine.streaming else "memory",
        "buckets": labels.buckets,  # of requests, labels.bucket_rows rows each: what memory held
    }


def _train_split(labels: LabelPlan) -> dict[str, pl.LazyFrame]:
    return {name: frame.filter(pl.col("split") == "train") for name, frame in labels.canvases.items()}


def prepare(
    config: ProjectConfig, catalogue: pl.DataFrame, logs: pl.DataFrame, *, inputs: dict[str, Any] | None = None
) -> PreparedData:
    """Label preparation per canvas, time split, stratified merge of the training split, in memory."""
    engine = FrameEngine()
    plan = label_plan(logs.lazy(), catalogue, config, engine)
    frames = {name: frame.collect() for name, frame in plan.canvases.items()}
    plan.canvases = {name: frame.lazy() for name, frame in frames.items()}
    cap = config.train.max_train_rows or None
    merged, mixture = merge_plan(_train_split(plan), config, engine, total_rows=cap, seed=config.train.seed)
    manifest = _manifest(config, plan, catalogue, mixture, engine, inputs)
    return PreparedData(catalogue, frames, merged.collect(), manifest)


def prepare_streaming(
    config: ProjectConfig,
    catalogue: pl.DataFrame,
    logs: list[Path],
    out: str | Path,
    *,
    inputs: dict[str, Any] | None = None,
    batch_rows: int = 250_000,
) -> Path:
    """The same preparation as :func:`prepare`, streamed: the log files are validated batch by batch into
    Parquet, polars' streaming engine computes the plan's aggregates over them, and the requests are
    prepared a bucket (``labels.bucket_rows``) at a time, each bucket spilled to a scratch folder (removed
    at the end) before the canvases' labels and the merged rows are streamed into ``out``. Memory holds a
    bucket, the catalogue and small per-key facts (users per day while finding bots, the times while
    cutting the split), not the rows.

    Args:
        catalogue: the validated catalogue.
        logs: the log files (Parquet read in batches of ``batch_rows``, CSV whole), validated batch by
            batch into the scratch folder (:func:`monorec.data.tables.validated_log_parts`).

    Returns:
        ``out``, a prepared-data folder :meth:`PreparedData.load` reads like the in-memory one's.
    """
    out = Path(out)
    manifest: dict[str, Any] = {}
    with atomic_dir(out, manifest=manifest) as tmp:
        engine = FrameEngine(tmp / "_scratch")
        validated = validated_log_parts(logs, config, tmp / "_scratch" / "logs", batch_rows=batch_rows)
        plan = label_plan(validated, catalogue, config, engine)
        (tmp / "labels").mkdir()
        for name, frame in plan.canvases.items():
            engine.write(frame, tmp / "labels" / f"{name}.parquet")
            plan.canvases[name] = pl.scan_parquet(tmp / "labels" / f"{name}.parquet")
        cap = config.train.max_train_rows or None
        merged, mixture = merge_plan(_train_split(plan), config, engine, total_rows=cap, seed=config.train.seed)
        engine.write(merged, tmp / "train_merged.parquet")
        catalogue.write_parquet(tmp / "catalogue.parquet")
        manifest.update(_manifest(config, plan, catalogue, mixture, engine, inputs))
        manifest["config_dict"] = config.to_dict()
        shutil.rmtree(tmp / "_scratch")
    return out
