"""Catalogue changes: what the change log carries.

A change upserts or deletes one entity and carries a ``revision`` (an integer that grows with every
change of that entity, e.g. the source system's row version or a timestamp). Consumers apply a change
only when its revision is newer than what they hold, so replays are harmless and order across entities
does not matter for correctness.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from monorec.errors import ChangeError

__all__ = ["ENTITY_FRAME_SCHEMA", "MAX_CHANGE_BYTES", "Change", "changes_frame", "parse_change"]

# entities as a table (a catalogue page, a batch of upserts): the catalogue columns plus the revision
ENTITY_FRAME_SCHEMA = {
    "entity_id": pl.String,
    "entity_type": pl.String,
    "title": pl.String,
    "categories": pl.String,  # "|"-separated
    "revision": pl.Int64,
}

MAX_CHANGE_BYTES = 64 * 1024  # a catalogue entity is small; anything bigger is refused
MAX_TITLE_CHARS = 2000
MAX_CATEGORIES = 64


@dataclass(frozen=True)
class Change:
    """One upsert or delete. ``entity_type``, ``title`` and ``categories`` matter for upserts only."""

    op: Literal["upsert", "delete"]
    entity_id: str
    revision: int
    entity_type: str = ""
    title: str = ""
    categories: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        if self.op == "delete":
            return {"op": "delete", "entity_id": self.entity_id, "revision": self.revision}
        return {
            "op": "upsert",
            "entity_id": self.entity_id,
            "revision": self.revision,
            "entity_type": self.entity_type,
            "title": self.title,
            "categories": list(self.categories),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


def parse_change(payload: str | bytes | dict[str, Any], entity_types: Sequence[str]) -> Change:
    """Validates one change (JSON text or a dict) against the declared entity types.

    Raises:
        ChangeError: naming the field that is missing, mistyped, too long or not allowed.
    """
    if isinstance(payload, str | bytes):
        if len(payload) > MAX_CHANGE_BYTES:
            raise ChangeError("*", f"the change is {len(payload)} bytes; at most {MAX_CHANGE_BYTES}")
        try:
            payload = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ChangeError("*", f"not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ChangeError("*", "a change is a JSON object")
    op = payload.get("op")
    if op not in ("upsert", "delete"):
        raise ChangeError("op", f"must be 'upsert' or 'delete', got {op!r}")
    entity_id = payload.get("entity_id")
    if not isinstance(entity_id, str) or not entity_id or len(entity_id) > 256:
        raise ChangeError("entity_id", "must be a non-empty string of at most 256 characters")
    revision = payload.get("revision")
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise ChangeError("revision", f"must be a non-negative integer, got {revision!r}")
    if op == "delete":
        return Change("delete", entity_id, revision)
    entity_type = payload.get("entity_type")
    if entity_type not in entity_types:
        raise ChangeError("entity_type", f"{entity_type!r} is not declared; declared: {list(entity_types)}")
    title = payload.get("title", "")
    if not isinstance(title, str) or len(title) > MAX_TITLE_CHARS:
        raise ChangeError("title", f"must be a string of at most {MAX_TITLE_CHARS} characters")
    categories = payload.get("categories", [])
    if isinstance(categories, str):
        categories = [c for c in categories.split("|") if c]
    if (
        not isinstance(categories, list)
        or len(categories) > MAX_CATEGORIES
        or not all(isinstance(c, str) and c for c in categories)
    ):
        raise ChangeError("categories", f"must be a list of at most {MAX_CATEGORIES} non-empty strings")
    return Change("upsert", entity_id, revision, str(entity_type), title, tuple(categories))


def changes_frame(changes: Sequence[Change]) -> pl.DataFrame:
    """Upserts -> an entity table (:data:`ENTITY_FRAME_SCHEMA`)."""
    rows = [(c.entity_id, c.entity_type, c.title, "|".join(c.categories), c.revision) for c in changes]
    return pl.DataFrame(rows, schema=ENTITY_FRAME_SCHEMA, orient="row")
