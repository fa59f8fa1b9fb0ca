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

import polars as pl

__all__ = ["FrameEngine"]


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
        frame.write_parquet(path)
        return pl.scan_parquet(path)

    def write(self, frame: pl.LazyFrame, path: str | Path) -> None:
        """Writes a table to a Parquet file (streamed to disk when streaming)."""
        if self.scratch is None:
            frame.collect().write_parquet(path)
        else:
            frame.sink_parquet(path)


def columns(frame: pl.LazyFrame | pl.DataFrame) -> list[str]:
    """A frame's column names without computing it."""
    return frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else frame.columns
