"""The documented input schema (logs and catalogue) and its validation.

A dataset is a folder::

    catalogue.parquet | catalogue.csv     one row per entity
    logs/*.parquet | logs/*.csv           interaction logs (one file per canvas, or any split you like)

Catalogue columns:
    entity_id (str, unique), entity_type (str, declared in the config), title (str),
    categories (str, "|"-separated, may be empty)

Log columns:
    ts (int, seconds), canvas (str, a declared canvas), entity_id (str, the entity shown),
    request_id (str, optional: rows sharing it are impressions of one request),
    every context field the canvas uses (str; float for numeric fields; "|"-separated ids, most recent
    last, for id_list fields such as a user's history),
    objective columns (number; null = not observed; 0/1 for binary objectives); each canvas's primary
    objective column is required, the others may be absent (unobserved).

Validation raises :class:`~monorec.errors.DataError` naming the file, the column and the rows affected.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from monorec.config import ProjectConfig
from monorec.errors import DataError

__all__ = [
    "CATALOGUE_COLUMNS",
    "load_dataset",
    "log_files",
    "read_catalogue",
    "read_table",
    "validate_catalogue",
    "validate_logs",
    "validated_log_parts",
]

CATALOGUE_COLUMNS = {"entity_id": pl.String, "entity_type": pl.String, "title": pl.String, "categories": pl.String}
LOG_REQUIRED = {"ts": pl.Int64, "canvas": pl.String, "entity_id": pl.String}


def read_table(path: str | Path) -> pl.DataFrame:
    """Reads a Parquet or CSV file.

    Raises:
        DataError: the file is missing, empty, of another format or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "file not found")
    try:
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
        elif path.suffix == ".csv":
            if path.stat().st_size == 0:
                raise DataError(str(path), "the file is empty")
            frame = pl.read_csv(path, infer_schema_length=10000)
        else:
            raise DataError(str(path), f"unsupported format {path.suffix!r}; use .parquet or .csv")
    except DataError:
        raise
    except Exception as exc:  # polars raises several types for unreadable files
        raise DataError(str(path), f"cannot be read: {exc}") from None
    if frame.height == 0:
        raise DataError(str(path), "the file has no rows")
    return frame


def _cast(frame: pl.DataFrame, file: str, column: str, dtype: pl.DataType | type[pl.DataType]) -> pl.DataFrame:
    """Casts a column, raising a DataError that counts the values that do not fit."""
    before = frame[column]
    if before.dtype == dtype:
        return frame
    if dtype == pl.Int64 and before.dtype.is_float():
        fractional = before.is_not_null() & (before != before.floor())
        if fractional.any():
            raise DataError(
                file, "expected integers, found fractional values", column=column, rows=int(fractional.sum())
            )
    after = before.cast(dtype, strict=False)
    bad = int((after.is_null() & before.is_not_null()).sum())
    if bad:
        raise DataError(file, f"expected {dtype} values", column=column, rows=bad)
    return frame.with_columns(after.alias(column))


def validate_catalogue(frame: pl.DataFrame, config: ProjectConfig, file: str = "catalogue") -> pl.DataFrame:
    """Checks and normalizes a catalogue table (types, required columns, unique ids, declared types)."""
    if "categories" not in frame.columns:
        frame = frame.with_columns(pl.lit("").alias("categories"))
    missing = [c for c in CATALOGUE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(file, f"missing required column(s) {missing}; expected {list(CATALOGUE_COLUMNS)}")
    for column, dtype in CATALOGUE_COLUMNS.items():
        frame = _cast(frame, file, column, dtype)
    nulls = int(frame["entity_id"].null_count())
    if nulls:
        raise DataError(file, "entity_id must not be empty", column="entity_id", rows=nulls)
    control = frame.filter(pl.col("entity_id").str.contains(r"[\x00-\x1f\x7f-\x9f]"))
    if control.height:  # the change log refuses such ids too (monorec.stream.changes.check_entity_id)
        raise DataError(
            file,
            f"entity ids must not contain control characters, e.g. {control['entity_id'][0]!r}",
            column="entity_id",
            rows=control.height,
        )
    long = frame.filter(pl.col("entity_id").str.len_chars() > 256)
    if long.height:
        raise DataError(file, "entity ids have at most 256 characters", column="entity_id", rows=long.height)
    dup = frame.filter(pl.col("entity_id").is_duplicated())
    if dup.height:
        raise DataError(file, f"duplicate ids, e.g. {dup['entity_id'][0]!r}", column="entity_id", rows=dup.height)
    bad_type = frame.filter(~pl.col("entity_type").is_in(list(config.entity_types)) | pl.col("entity_type").is_null())
    if bad_type.height:
        raise DataError(
            file,
            f"entity_type {bad_type['entity_type'][0]!r} is not declared; declared: {list(config.entity_types)}",
            column="entity_type",
            rows=bad_type.height,
        )
    return frame.with_columns(pl.col("title").fill_null(""), pl.col("categories").fill_null(""))


def validate_logs(frame: pl.DataFrame, config: ProjectConfig, file: str = "logs") -> pl.DataFrame:
    """Checks and normalizes a log table against the config's fields, canvases and objectives."""
    missing = [c for c in LOG_REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(file, f"missing required column(s) {missing}; expected at least {list(LOG_REQUIRED)}")
    for column, dtype in LOG_REQUIRED.items():
        frame = _cast(frame, file, column, dtype)
        nulls = int(frame[column].null_count())
        if nulls:
            raise DataError(file, "must not be empty", column=column, rows=nulls)
    unknown = frame.filter(~pl.col("canvas").is_in(list(config.canvas_names)))
    if unknown.height:
        raise DataError(
            file,
            f"unknown canvas {unknown['canvas'][0]!r}; declared: {list(config.canvas_names)}",
            column="canvas",
            rows=unknown.height,
        )
    if "request_id" in frame.columns:
        frame = _cast(frame, file, "request_id", pl.String)
    for f in config.fields:
        if f.name in frame.columns:
            frame = _cast(frame, file, f.name, pl.Float64 if f.kind == "numeric" else pl.String)
    present = set(frame["canvas"].unique().to_list())
    for o in config.objectives:
        # only a primary objective (what marks a relevant entity) is mandatory; others may be unobserved
        needed_by = [c.name for c in config.canvases if c.primary == o.name and c.name in present]
        if o.column not in frame.columns:
            if needed_by:
                raise DataError(
                    file, f"primary objective {o.name!r} of canvas(es) {needed_by} needs this column", column=o.column
                )
            continue
        frame = _cast(frame, file, o.column, pl.Float64)
        nan = int(frame[o.column].is_nan().sum())
        if nan:
            raise DataError(
                file, "NaN labels (leave a label empty/null when it was not observed)", column=o.column, rows=nan
            )
        if o.kind == "binary":
            bad = int((frame[o.column].is_not_null() & ~frame[o.column].is_in([0.0, 1.0])).sum())
            if bad:
                raise DataError(file, "binary objective values must be 0 or 1", column=o.column, rows=bad)
        elif o.transform == "log1p":
            bad = int((frame[o.column] < 0).sum())
            if bad:
                raise DataError(file, "log1p objective values must be >= 0", column=o.column, rows=bad)
    for c in config.canvases:
        primary = config.objective(c.primary).column
        if primary in frame.columns:
            bad = int(frame.filter((pl.col("canvas") == c.name) & pl.col(primary).is_null()).height)
            if bad:
                raise DataError(
                    file, f"the primary objective of canvas {c.name!r} must be set", column=primary, rows=bad
                )
    return frame


def read_catalogue(folder: str | Path, config: ProjectConfig) -> pl.DataFrame:
    """A dataset folder's validated catalogue.

    Raises:
        DataError: no catalogue file, or a problem in it.
    """
    folder = Path(folder)
    path = next((folder / f"catalogue{s}" for s in (".parquet", ".csv") if (folder / f"catalogue{s}").exists()), None)
    if path is None:
        raise DataError(str(folder), "no catalogue.parquet or catalogue.csv")
    return validate_catalogue(read_table(path), config, str(path))


def log_files(folder: str | Path) -> list[Path]:
    """A dataset folder's log files, in the order they are read.

    Raises:
        DataError: there are none.
    """
    folder = Path(folder)
    files = sorted([*folder.glob("logs/*.parquet"), *folder.glob("logs/*.csv")])
    if not files:
        raise DataError(str(folder / "logs"), "no log files (*.parquet or *.csv)")
    return files


def load_dataset(folder: str | Path, config: ProjectConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Reads and validates a dataset folder.

    Returns:
        (catalogue, logs): both validated; logs concatenated over every file in ``logs/``.

    Raises:
        DataError: any problem, naming the file.
    """
    catalogue = read_catalogue(folder, config)
    parts = [validate_logs(read_table(p), config, str(p)) for p in log_files(folder)]
    columns: dict[str, pl.DataType] = {}
    for part in parts:
        for name, dtype in part.schema.items():
            columns.setdefault(name, dtype)
    aligned = [
        part.with_columns(
            [pl.lit(None, dtype=dt).alias(n) for n, dt in columns.items() if n not in part.columns]
        ).select(list(columns))
        for part in parts
    ]
    return catalogue, pl.concat(aligned, how="vertical")


def validated_log_parts(
    files: list[Path], config: ProjectConfig, out: str | Path, *, batch_rows: int = 250_000
) -> pl.LazyFrame:
    """Validates log files batch by batch into Parquet parts under ``out`` (Parquet files are read in
    batches of ``batch_rows``; a CSV file whole), and scans the parts back as one table with the union of
    their columns, in the order :func:`load_dataset` concatenates them: the streaming path's input.

    Raises:
        DataError: any problem, naming the file (as :func:`load_dataset`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts: dict[Path, list[str]] = {}  # part -> its columns
    columns: dict[str, pl.DataType] = {}
    for i, path in enumerate(files):
        if path.suffix == ".parquet":
            try:
                reader = pq.ParquetFile(path)
            except Exception as exc:  # pyarrow raises several types for unreadable files
                raise DataError(str(path), f"cannot be read: {exc}") from None
            if reader.metadata.num_rows == 0:
                raise DataError(str(path), "the file has no rows")
            batches: Iterator[pl.DataFrame | pl.Series] = (
                pl.from_arrow(b) for b in reader.iter_batches(batch_size=batch_rows)
            )
        else:
            batches = iter([read_table(path)])
        for j, batch in enumerate(batches):
            assert isinstance(batch, pl.DataFrame)
            part = validate_logs(batch, config, str(path))
            for name, dtype in part.schema.items():
                columns.setdefault(name, dtype)
            parts[out / f"part-{i:05d}-{j:06d}.parquet"] = part.columns
            part.write_parquet(out / f"part-{i:05d}-{j:06d}.parquet")
            del batch, part
            # pyarrow's allocator keeps what the read batches freed, and polars (its own allocator) never
            # reuses it: without this the batches' memory stays resident under every later stage
            pa.default_memory_pool().release_unused()
    return pl.concat(
        [
            pl.scan_parquet(p)
            .with_columns([pl.lit(None, dtype=dt).alias(n) for n, dt in columns.items() if n not in names])
            .select(list(columns))
            for p, names in parts.items()
        ],
        how="vertical",
    )
