"""Where the prepare stage computes: in memory, or streaming over Parquet for logs larger than memory.

The prepare stage is ONE plan (:mod:`monorec.data.labels`, :mod:`monorec.data.merge`): aggregates over the
whole log (polars lazy frames), then buckets of requests prepared one at a time. A :class:`FrameEngine`
decides where it runs. In memory, polars' default engine computes the aggregates and the prepared buckets
stay DataFrames. Streaming, polars' streaming engine computes the aggregates over Parquet scans, and every
prepared bucket is spilled to Parquet under a scratch folder, so that memory holds one bucket, not the
rows. The plan being the same, both give the same prepared data (``tests/test_streaming_prepare.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["FrameEngine"]

# rows per row group of every Parquet file the streaming engine writes: polars' streaming engine reads ahead
# by row groups over the files of a scan, so its working set follows their size (the 262,144 rows of polars'
# default took a 6M-row prepare to 1.1-1.26 GB, 50,000 to 0.95-1.02 GB; B12 in docs/benchmarks.md)
ROW_GROUP_ROWS = 50_000


class FrameEngine:
    """How the prepare plan runs: ``FrameEngine()`` in memory, ``FrameEngine(scratch)`` streaming.

    Args:
        scratch: a folder for the intermediate tables (streaming); None: in memory.
    """

    def __init__(self, scratch: str | Path | None = None) -> None:
        self.scratch = Path(scratch) if scratch is not None else None
        if self.scratch is not None:
            self.scratch.mkdir(parents=True, exist_ok=True)

    @property
    def streaming(self) -> bool:
        return self.scratch is not None

    def collect(self, frame: pl.LazyFrame) -> pl.DataFrame:
        """A plan's result as a DataFrame: for aggregates and other small results (counts, cut-offs, ids)."""
        return frame.collect(engine="streaming" if self.streaming else "auto")

    def spill(self, frame: pl.DataFrame, name: str) -> pl.LazyFrame:
        """Keeps a prepared piece (a bucket's rows) for later: in memory, or (streaming) written to
        ``scratch/<name>.parquet`` and scanned back, so that memory holds one piece at a time."""
        if self.scratch is None:
            return frame.lazy()
        path = self.scratch / f"{name}.parquet"
        frame.write_parquet(path, row_group_size=ROW_GROUP_ROWS)
        return pl.scan_parquet(path)

    def partition(
        self, frame: pl.LazyFrame, key: pl.Expr, parts: int, name: str, *, batch_rows: int
    ) -> list[pl.LazyFrame]:
        """``frame`` cut into ``parts`` pieces by ``key`` (an integer expression of its rows, 0..parts-1),
        each piece in ``frame``'s row order.

        In memory each piece is ``frame`` filtered. Streaming, the frame is computed ONCE: sunk to Parquet,
        read back ``batch_rows`` at a time, and each batch's rows appended (a row group) to their piece's
        file under ``scratch/<name>/`` (one open file per piece). A filtered scan per piece would compute
        the whole plan once per piece, and polars' streaming engine, reading ahead over every file of the
        scan, held 0.9 GB for a piece of 250,000 rows of a 6M-row log where a piece read from its own
        file takes 0.6 GB (docs/benchmarks.md, B12).
        """
        if parts == 1:
            return [frame]
        if self.scratch is None:
            return [frame.filter(key == b) for b in range(parts)]
        folder = self.scratch / name
        folder.mkdir()
        whole = folder / "whole.parquet"
        frame.with_columns(key.cast(pl.Int64).alias("_piece")).sink_parquet(whole, row_group_size=ROW_GROUP_ROWS)
        writers: dict[int, pq.ParquetWriter] = {}
        try:
            for batch in pq.ParquetFile(whole).iter_batches(batch_size=batch_rows):
                piece = batch.column("_piece").to_numpy()
                order = np.argsort(piece, kind="stable")  # by piece, each piece's rows in their order
                rows = pa.Table.from_batches([batch]).drop_columns("_piece").take(order)
                counts = np.bincount(piece, minlength=parts)
                ends = np.cumsum(counts)
                for p in map(int, np.flatnonzero(counts)):
                    if p not in writers:
                        writers[p] = pq.ParquetWriter(folder / f"{p:05d}.parquet", rows.schema)
                    writers[p].write_table(
                        rows.slice(int(ends[p] - counts[p]), int(counts[p])), row_group_size=ROW_GROUP_ROWS
                    )
                del batch, rows
                pa.default_memory_pool().release_unused()  # see monorec.data.tables.validated_log_parts
        finally:
            for writer in writers.values():
                writer.close()
        whole.unlink()
        empty = frame.clear()
        return [pl.scan_parquet(folder / f"{p:05d}.parquet") if p in writers else empty for p in range(parts)]

    def write(self, frame: pl.LazyFrame, path: str | Path) -> None:
        """Writes a table to a Parquet file (streamed to disk when streaming)."""
        if self.scratch is None:
            frame.collect().write_parquet(path)
        else:
            frame.sink_parquet(path, row_group_size=ROW_GROUP_ROWS)


def columns(frame: pl.LazyFrame | pl.DataFrame) -> list[str]:
    """A frame's column names without computing it."""
    return frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else frame.columns
