"""What the change log carries: catalogue changes and user changes.

A :class:`Change` upserts or deletes one entity; a :class:`UserChange` is one user's whole new state (the
profile fields of their context and their recent history, oldest first), published when a profile is
written or an event arrives. Both carry a ``revision`` (an integer that grows with every change of that
entity or user, e.g. the source system's row version or a timestamp). Consumers apply a change only when
its revision is newer than what they hold, so replays are harmless and order across keys does not matter
for correctness.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from monorec.errors import ChangeError

__all__ = [
    "ENTITY_FRAME_SCHEMA",
    "MAX_CHANGE_BYTES",
    "MAX_REVISION",
    "AnyChange",
    "Change",
    "UserChange",
    "changes_frame",
    "check_category",
    "check_entity_id",
    "check_revision",
    "parse_change",
]

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
MAX_ID_CHARS = 256
MAX_PROFILE_FIELDS = 32  # a user's profile: the user canvas's context fields, a handful
MAX_HISTORY = 200  # a user change carries at most this many recent entities (a history field keeps fewer)
# revisions are stored as signed 64-bit integers everywhere (SQLite INTEGER, numpy int64, Parquet Int64):
# a larger one must be refused where it enters, never reach a consumer that cannot store it
MAX_REVISION = 2**63 - 1
CATEGORY_SEPARATOR = "|"  # how the catalogue table stores a list of categories in one column


def _control_character(text: str) -> str | None:
    """The first control character (C0, DEL or C1) in ``text``, if any."""
    for ch in text:
        if ch < " " or "\x7f" <= ch <= "\x9f":
            return ch
    return None


def check_entity_id(entity_id: object, field: str = "entity_id") -> str:
    """A valid entity id: a non-empty string of at most 256 characters without control characters
    (ids are keys in every store and index; a control character such as a trailing NUL does not survive
    every one of them, and an id that changes on restart would make the index differ from the catalogue).

    Raises:
        ChangeError: naming ``field``.
    """
    if not isinstance(entity_id, str) or not entity_id or len(entity_id) > MAX_ID_CHARS:
        raise ChangeError(field, f"must be a non-empty string of at most {MAX_ID_CHARS} characters")
    bad = _control_character(entity_id)
    if bad is not None:
        raise ChangeError(field, f"must not contain control characters (found {bad!r})")
    return entity_id


def check_revision(revision: object, field: str = "revision") -> int:
    """A valid revision: an integer in [0, 2^63 - 1].

    Raises:
        ChangeError: naming ``field``.
    """
    if isinstance(revision, bool) or not isinstance(revision, int) or not 0 <= revision <= MAX_REVISION:
        raise ChangeError(field, f"must be an integer between 0 and {MAX_REVISION} (2^63 - 1), got {revision!r}")
    return revision


def check_category(category: object, field: str = "categories") -> str:
    """A valid category: a non-empty string without the catalogue's separator or control characters.

    Raises:
        ChangeError: naming ``field``.
    """
    if not isinstance(category, str) or not category or len(category) > 128:
        raise ChangeError(field, "each category must be a non-empty string of at most 128 characters")
    if CATEGORY_SEPARATOR in category or _control_character(category) is not None:
        raise ChangeError(
            field, f"a category must not contain {CATEGORY_SEPARATOR!r} or control characters: {category!r}"
        )
    return category


@dataclass(frozen=True)
class Change:
    """One upsert or delete. ``entity_type``, ``title`` and ``categories`` matter for upserts only: an upsert
    is the entity's whole new state (a full replace, never a merge of the fields given)."""

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


@dataclass(frozen=True)
class UserChange:
    """One user's whole new state (a full replace, like an entity upsert): ``profile`` holds context field
    values (country, language...; checked against the schema where a version encodes them), ``history``
    the user's recent entities, oldest first."""

    user_id: str
    revision: int
    profile: tuple[tuple[str, str | int | float | bool], ...] = ()
    history: tuple[str, ...] = ()
    op: Literal["user"] = "user"

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": "user",
            "user_id": self.user_id,
            "revision": self.revision,
            "profile": dict(self.profile),
            "history": list(self.history),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


AnyChange = Change | UserChange


def _parse_user(payload: dict[str, Any]) -> UserChange:
    user_id = check_entity_id(payload.get("user_id"), "user_id")
    revision = check_revision(payload.get("revision"))
    profile = payload.get("profile", {})
    if not isinstance(profile, dict) or len(profile) > MAX_PROFILE_FIELDS:
        raise ChangeError("profile", f"must be an object of at most {MAX_PROFILE_FIELDS} fields")
    for name, value in profile.items():
        if not isinstance(name, str) or not name or len(name) > 64 or _control_character(name) is not None:
            raise ChangeError("profile", f"field names are 1-64 characters without control characters: {name!r}")
        if not isinstance(value, str | int | float | bool) or (isinstance(value, str) and len(value) > 1000):
            raise ChangeError(f"profile.{name}", "must be a string (at most 1000 characters), number or boolean")
        if isinstance(value, float) and not math.isfinite(value):
            raise ChangeError(f"profile.{name}", f"must be finite, got {value!r}")
    history = payload.get("history", [])
    if not isinstance(history, list) or len(history) > MAX_HISTORY:
        raise ChangeError("history", f"must be a list of at most {MAX_HISTORY} entity ids")
    for entity_id in history:
        check_entity_id(entity_id, "history")
    return UserChange(user_id, revision, tuple(sorted(profile.items())), tuple(history))


def parse_change(payload: str | bytes | dict[str, Any], entity_types: Sequence[str]) -> AnyChange:
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
    if op == "user":
        return _parse_user(payload)
    if op not in ("upsert", "delete"):
        raise ChangeError("op", f"must be 'upsert', 'delete' or 'user', got {op!r}")
    entity_id = check_entity_id(payload.get("entity_id"))
    revision = check_revision(payload.get("revision"))
    if op == "delete":
        return Change("delete", entity_id, revision)
    entity_type = payload.get("entity_type")
    if entity_type not in entity_types:
        raise ChangeError("entity_type", f"{entity_type!r} is not declared; declared: {list(entity_types)}")
    # an upsert is the entity's whole new state (what makes applying by revision order-free), so it
    # carries every field: a missing title would silently blank the stored one
    for name in ("title", "categories"):
        if name not in payload:
            raise ChangeError(name, "is required: an upsert replaces the whole entity (use [] for no categories)")
    title = payload["title"]
    if not isinstance(title, str) or len(title) > MAX_TITLE_CHARS:
        raise ChangeError("title", f"must be a string of at most {MAX_TITLE_CHARS} characters")
    categories = payload["categories"]
    if isinstance(categories, str):  # the catalogue table's form: "a|b"
        categories = [c for c in categories.split(CATEGORY_SEPARATOR) if c]
    if not isinstance(categories, list) or len(categories) > MAX_CATEGORIES:
        raise ChangeError("categories", f"must be a list of at most {MAX_CATEGORIES} non-empty strings")
    for c in categories:
        check_category(c)
    return Change("upsert", entity_id, revision, str(entity_type), title, tuple(categories))


def changes_frame(changes: Sequence[Change]) -> pl.DataFrame:
    """Upserts -> an entity table (:data:`ENTITY_FRAME_SCHEMA`)."""
    rows = [(c.entity_id, c.entity_type, c.title, CATEGORY_SEPARATOR.join(c.categories), c.revision) for c in changes]
    return pl.DataFrame(rows, schema=ENTITY_FRAME_SCHEMA, orient="row")
