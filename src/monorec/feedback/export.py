"""The loop back to training: the feedback journal's answers and events joined into training logs.

One log row per (request, entity) that received an event: the answer's unified context (what the model saw,
when the event names a request the journal holds; else the event's user alone), the event's user, canvas and
entity, and the objective columns the config's ``[feedback]`` section maps each event kind to (a pair
without a click has the click column 0; like is 0 on a clicked pair without a like and unobserved otherwise;
watch sums the pair's watch values; rating is its last rating). Rows are written as a dataset folder in the
documented schema (``catalogue.parquet`` + ``logs/feedback-YYYY-MM-DD.parquet``, one file per day), through
:func:`monorec.artifacts.atomic_dir`, so ``monorec prepare --data DIR`` reads it with no glue and a crash
never leaves a half-written export that looks complete.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import polars as pl

from monorec.artifacts import atomic_dir
from monorec.config import ProjectConfig
from monorec.feedback.journal import FeedbackJournal

__all__ = ["export_logs", "feedback_rows"]


def feedback_rows(answers: pl.DataFrame, events: pl.DataFrame, config: ProjectConfig) -> pl.DataFrame:
    """Log rows from the journal's ``answers`` and ``events`` frames (see the module docstring).

    Returns:
        One row per (request, entity) with events: ``request_id, ts`` (int seconds), ``canvas, entity_id,
        user_id``, every context field of the answer, and the mapped objective columns.
    """
    fb = config.feedback
    if events.is_empty():
        return pl.DataFrame()
    # events without a request id are their own request per (user, canvas, entity)
    events = events.with_columns(
        pl.coalesce(
            pl.col("request_id"),
            pl.concat_str(
                [pl.lit("event:"), pl.col("user_id"), pl.col("canvas"), pl.col("entity_id")], separator="\x1f"
            ),
        ).alias("request_id")
    )
    kind = pl.col("kind")
    aggregations: list[pl.Expr] = [
        pl.col("user_id").first(),
        pl.col("canvas").first().alias("event_canvas"),
        pl.col("ts").min().alias("event_ts"),
    ]
    clicked = (kind == "click").any()
    if fb.click:
        aggregations.append(clicked.cast(pl.Float64).alias(fb.click))
    if fb.like:
        liked = (kind == "like").any()
        aggregations.append(
            pl.when(liked).then(1.0).when(clicked).then(0.0).otherwise(None).cast(pl.Float64).alias(fb.like)
        )
    if fb.watch:
        watch = pl.col("value").filter(kind == "watch")
        aggregations.append(pl.when(watch.count() > 0).then(watch.sum()).otherwise(None).alias(fb.watch))
    if fb.rating:
        aggregations.append(pl.col("value").filter(kind == "rating").last().alias(fb.rating))
    pairs = events.group_by(["request_id", "entity_id"], maintain_order=True).agg(aggregations)

    fields = [f.name for f in config.fields]
    contexts = _contexts(answers, fields)
    rows = pairs.join(contexts, on="request_id", how="left")
    user = pl.col("user_id")
    if "user_id" in contexts.columns:  # the answer's user when it had one, else the event's
        user = pl.coalesce(pl.col("user_id_right"), pl.col("user_id"))
    rows = rows.with_columns(
        pl.coalesce(pl.col("answer_canvas"), pl.col("event_canvas")).alias("canvas"),
        pl.coalesce(pl.col("answer_ts"), pl.col("event_ts")).cast(pl.Int64).alias("ts"),
        user.alias("user_id"),
    )
    keep = ["request_id", "ts", "canvas", "entity_id", "user_id"]
    keep += [f for f in fields if f in rows.columns and f not in keep]
    keep += [c for c in (fb.click, fb.like, fb.watch, fb.rating) if c is not None and c not in keep]
    return rows.select(keep).sort("ts", maintain_order=True)


def _contexts(answers: pl.DataFrame, fields: list[str]) -> pl.DataFrame:
    """request_id, answer_ts, answer_canvas and one column per context field of each answer."""
    records: list[dict[str, Any]] = []
    for request_id, ts, canvas, context in answers.select("request_id", "ts", "canvas", "context").iter_rows():
        record = {k: v for k, v in json.loads(context).items() if k in fields}
        records.append({"request_id": request_id, "answer_ts": ts, "answer_canvas": canvas, **record})
    schema: dict[str, Any] = {"request_id": pl.String, "answer_ts": pl.Float64, "answer_canvas": pl.String}
    frame = pl.DataFrame(records, schema_overrides=schema) if records else pl.DataFrame(schema=schema)
    return frame.rename({"user_id": "user_id_right"}) if "user_id" in frame.columns else frame


def export_logs(
    journal: FeedbackJournal, catalogue: pl.DataFrame, config: ProjectConfig, out: str | Path
) -> dict[str, Any]:
    """Writes the journal as a dataset folder at ``out`` (replacing a previous export atomically).

    Args:
        journal: the deployment's feedback journal.
        catalogue: the current catalogue (``entity_id, entity_type, title, categories``).
        config: the project config (its fields and ``[feedback]`` columns).
        out: the dataset folder to write.

    Returns:
        A summary: rows, requests, days, and events whose request the journal does not hold.
    """
    answers, events = journal.answers(), journal.events()
    rows = feedback_rows(answers, events, config)
    known = set(answers["request_id"].to_list())
    orphans = int(events.filter(pl.col("request_id").is_not_null() & ~pl.col("request_id").is_in(known)).height)
    days: dict[str, pl.DataFrame] = {}
    if rows.height:
        day = rows["ts"].map_elements(lambda t: dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d"), pl.String)
        for (name,), part in rows.with_columns(day.alias("_day")).group_by("_day", maintain_order=True):
            days[str(name)] = part.drop("_day")
    summary = {
        "rows": rows.height,
        "requests": int(rows["request_id"].n_unique()) if rows.height else 0,
        "days": sorted(days),
        "events": events.height,
        "events_without_answer": orphans,
    }
    with atomic_dir(out, manifest={"kind": "dataset", "generator": "feedback", "summary": summary}) as tmp:
        catalogue.select("entity_id", "entity_type", "title", "categories").write_parquet(tmp / "catalogue.parquet")
        (tmp / "logs").mkdir()
        for name, part in days.items():
            part.write_parquet(tmp / "logs" / f"feedback-{name}.parquet")
    return summary
