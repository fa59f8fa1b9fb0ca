"""Popular entities per canvas, and per canvas and context value (e.g. per category, per country).

Learned from the training responses (rows where the canvas's primary objective is 1) when a model is
trained, and published with it: they are the precomputed fallback that answers a request when the model
path misses its deadline or fails, so they must be ready before any request arrives and cost a dict look-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from monorec.config import ProjectConfig

__all__ = ["PopularLists"]


@dataclass(frozen=True)
class PopularLists:
    """Entity ids, most responded-to first, under keys ``canvas`` and ``canvas|field=value``.

    Only categorical context fields get per-value lists: they have few values (countries, categories,
    devices), where an id field (a user) would give one list per user, which is what the model is for.
    """

    lists: dict[str, list[str]] = field(default_factory=dict)
    fields: dict[str, list[str]] = field(default_factory=dict)  # canvas -> its keyed fields, most specific first

    @staticmethod
    def columns(config: ProjectConfig) -> list[str]:
        """The response columns :meth:`fit` reads: the canvas, the entity, every categorical context field."""
        return ["canvas", "entity_id", *(f.name for f in config.fields if f.kind == "categorical")]

    @classmethod
    def fit(
        cls, responses: pl.DataFrame, config: ProjectConfig, top_n: int = 200, catalogue: pl.DataFrame | None = None
    ) -> PopularLists:
        """Counts responses per canvas (and per value of each categorical field the canvas uses).

        A field over the shared ``category`` vocabulary names a category of entities (browse's category):
        with ``catalogue`` given, its list for category X is the entities OF category X that drew the most
        responses on EVERY canvas, not only the responses of requests that carried X: a canvas's own
        requests per category are few, and a category none of them browsed still gets its list.

        Args:
            responses: rows with ``canvas`` and ``entity_id`` (one per response) and the context columns.
            config: gives each canvas's fields.
            top_n: entities kept per list.
            catalogue: ``entity_id`` and ``categories`` ("a|b"): enables per-category lists by membership.
        """
        by_membership = _by_category(responses, catalogue, top_n) if catalogue is not None else None
        # counted by streaming group-bys keyed by the canvas over all responses, with no per-canvas copy of
        # the rows: 6M responses' fit took 465 MB for a moment on eager group-bys of copies, 78 MB now
        per_canvas = _count(responses, ["canvas"])
        lists: dict[str, list[str]] = {}
        fields: dict[str, list[str]] = {}
        by_field: dict[str, pl.DataFrame] = {}
        for canvas in config.canvases:
            counts = per_canvas.filter(pl.col("canvas") == canvas.name)
            if counts.height == 0:
                continue
            lists[canvas.name] = _top(counts, [], top_n)[""]
            keyed = [
                f.name
                for f in config.fields
                if f.name in canvas.fields and f.kind == "categorical" and f.name in responses.columns
            ]
            # a shared category vocabulary describes the entities themselves: the most telling key
            keyed.sort(key=lambda name: config.field(name).vocabulary != "category")
            fields[canvas.name] = keyed
            for name in keyed:
                if by_membership is not None and config.field(name).vocabulary == "category":
                    found = by_membership
                else:
                    if name not in by_field:
                        by_field[name] = _count(responses, ["canvas", name]).filter(pl.col(name).is_not_null())
                    mine = by_field[name].filter(pl.col("canvas") == canvas.name)
                    found = _top(mine, [name], top_n)
                for value, ids in found.items():
                    lists[f"{canvas.name}|{name}={value}"] = ids
        return cls(lists, fields)

    def lookup(self, canvas: str, record: Mapping[str, Any]) -> tuple[list[str], str]:
        """The most specific list for a normalized request record, and its key ("" when none exists)."""
        for name in self.fields.get(canvas, []):
            value = record.get(name)
            key = f"{canvas}|{name}={value}"
            if value is not None and key in self.lists:
                return self.lists[key], key
        if canvas in self.lists:
            return self.lists[canvas], canvas
        return [], ""

    def to_dict(self) -> dict[str, Any]:
        return {"lists": self.lists, "fields": self.fields}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PopularLists:
        return cls(
            {str(k): [str(e) for e in v] for k, v in raw.get("lists", {}).items()},
            {str(k): [str(f) for f in v] for k, v in raw.get("fields", {}).items()},
        )


def _count(rows: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """Responses per (``by`` values, entity): columns ``by``, ``entity_id``, ``len`` (polars' streaming
    engine: it holds the counts, not a hash table over every row)."""
    return rows.lazy().group_by([*by, "entity_id"]).len().collect(engine="streaming")


def _top(counts: pl.DataFrame, by: list[str], top_n: int) -> dict[str, list[str]]:
    """value of ``by`` ("" when ``by`` is empty) -> the ``top_n`` entity ids with the most responses in
    ``counts`` (from :func:`_count`; ties by id)."""
    counts = counts.sort([*by, "len", "entity_id"], descending=[*[False] * len(by), True, False])
    if not by:
        return {"": counts["entity_id"].head(top_n).to_list()}
    out: dict[str, list[str]] = {}
    for (value,), group in counts.group_by(by, maintain_order=True):
        out[str(value)] = group["entity_id"].head(top_n).to_list()
    return out


def _by_category(responses: pl.DataFrame, catalogue: pl.DataFrame, top_n: int) -> dict[str, list[str]]:
    """category -> the ``top_n`` entities of that category with the most responses (every canvas; ties by
    id); every category of the catalogue gets a list, its entities without responses after the others."""
    counts = _count(responses, [])
    members = (
        catalogue.select("entity_id", pl.col("categories").fill_null("").str.split("|").alias("category"))
        .explode("category")
        .filter(pl.col("category") != "")
        .join(counts, on="entity_id", how="left")
        .with_columns(pl.col("len").fill_null(0))
    )
    ranked = members.sort(["category", "len", "entity_id"], descending=[False, True, False])
    return {
        str(value): group["entity_id"].head(top_n).to_list()
        for (value,), group in ranked.group_by("category", maintain_order=True)
    }
