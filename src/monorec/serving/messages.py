"""What a request asks and what an answer holds: the serving API's contract, shared by the engine (plain
Python) and the HTTP layer (which documents it in OpenAPI). Sizes are bounded here so that an oversized
request is refused before it costs anything; the environment's own limits (k, explicit candidates) and
the context schema's (unknown fields, text length) are checked by the engine with the field named.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from monorec.stream.changes import MAX_REVISION

__all__ = [
    "ENTITY_ID_PATTERN",
    "MAX_BATCH",
    "MAX_K",
    "BatchRequest",
    "BatchResponse",
    "Candidates",
    "EntityOut",
    "EntityWrite",
    "EventBatch",
    "EventIn",
    "FallbackInfo",
    "RecommendRequest",
    "RecommendResponse",
    "ScoredEntity",
]

MAX_K = 1000  # the schema's ceiling; an environment's max_k is usually far lower
MAX_BATCH = 256  # the schema's ceiling on a batch call; the environment's max_batch_requests applies first
MAX_IDS = 5000

Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=128)]
# what an entity id may be (the change log's rule, stated in the API): no control characters
ENTITY_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
# a category as stored: no control characters and not the catalogue's "|" separator
Category = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^|\x00-\x1f\x7f-\x9f]+$")]
Revision = Annotated[int, Field(ge=0, le=MAX_REVISION)]
ContextValue = str | int | float | list[str | int] | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Candidates(_Strict):
    """Which entities may be answered: a filter on the catalogue, exclusions, or an explicit list to rank."""

    entity_types: list[Label] | None = Field(default=None, max_length=64, description="only these entity types")
    categories: list[Label] | None = Field(default=None, max_length=256, description="only entities in any of these")
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_IDS, description="never answer these ids")
    ids: list[Id] | None = Field(
        default=None, max_length=MAX_IDS, description="rank exactly these ids (no retrieval); unknown ids are skipped"
    )


class RecommendRequest(_Strict):
    """One ranked list for one canvas."""

    canvas: Label = Field(description="the canvas: home, related, search, browse...")
    context: dict[Label, ContextValue] = Field(
        default_factory=dict, max_length=64, description="any subset of the unified context fields"
    )
    candidates: Candidates = Field(default_factory=Candidates)
    k: int = Field(default=10, ge=1, le=MAX_K, description="how many entities to answer")
    timeout_ms: float | None = Field(
        default=None, gt=0, le=60_000, description="deadline; at most the environment's latency budget"
    )
    fallback: Literal["popular", "cached", "none"] | None = Field(
        default=None,
        description="what answers when the model misses the deadline or fails (default: the environment's)",
    )


class BatchRequest(_Strict):
    requests: list[RecommendRequest] = Field(min_length=1, max_length=MAX_BATCH)


class ScoredEntity(BaseModel):
    entity_id: str
    entity_type: str
    title: str
    categories: list[str]
    score: float | None = Field(description="the canvas's blended score; null when a fallback answered")
    predictions: dict[str, float] = Field(default_factory=dict, description="each objective of the canvas")
    sources: list[str] = Field(
        default_factory=list, description="the candidate sources that proposed it (empty: named by the request)"
    )


class FallbackInfo(BaseModel):
    reason: str = Field(description="why the model did not answer: deadline, error: <kind>, no_version")
    source: Literal["popular", "cached"]
    key: str = Field(default="", description="which popular list or cached request answered")


class RecommendResponse(BaseModel):
    canvas: str
    version: str | None = Field(description="the model version that produced (or would have produced) it")
    items: list[ScoredEntity]
    took_ms: float
    source: Literal["model", "cache", "precomputed", "fallback"]
    fallback: FallbackInfo | None = None
    unknown_candidates: list[str] = Field(default_factory=list, description="explicit ids not in the catalogue")
    sources: list[str] = Field(
        default_factory=list, description="the candidate sources that answered (a failed one is left out)"
    )
    request_id: str = Field(
        default="", description="this answer's id: events about what it showed name it (POST /v1/events)"
    )


class BatchResponse(BaseModel):
    responses: list[RecommendResponse]


class EntityWrite(_Strict):
    """An entity upsert through the API (it goes to the change log like any producer's change). It is a full
    replace: the entity becomes exactly what the body says, so every field is required."""

    entity_type: Label
    title: str = Field(max_length=2000, description="required: an upsert replaces the whole entity")
    categories: list[Category] = Field(max_length=64, description="required ([] for none); no '|' in a category")
    revision: Revision | None = Field(
        default=None, description="at most 2^63 - 1; default: the current time in microseconds"
    )


class EntityOut(BaseModel):
    entity_id: str
    entity_type: str
    title: str
    categories: list[str]
    revision: int
    versions: dict[str, bool] = Field(default_factory=dict, description="live version -> whether its index holds it")


ProfileValue = Annotated[str, StringConstraints(max_length=1000)] | int | float | bool


class UserWrite(_Strict):
    """A user's profile through the API: a full replace of the profile fields (their history stays what
    their events made it). It goes to the change log as the user's new state."""

    profile: dict[str, ProfileValue] = Field(
        max_length=32, description="declared context fields other than the user and the history (country...)"
    )

    @field_validator("profile")
    @classmethod
    def _finite(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name, value in v.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"profile.{name} must be a finite number")
        return v


class UserOut(BaseModel):
    user_id: str
    revision: int
    profile: dict[str, Any]
    history: list[str] = Field(description="the user's recent entities, oldest first")
    versions: dict[str, bool] = Field(
        default_factory=dict, description="live version -> whether its user store holds the user's current state"
    )


MAX_EVENTS = 1000  # events per batch call
# an event's time: seconds since the epoch, between 2000-01-01 and 2100-01-01 (a millisecond or nanosecond
# timestamp sent by mistake is refused instead of landing its rows in another century)
MIN_EVENT_TS, MAX_EVENT_TS = 946_684_800.0, 4_102_444_800.0
VALUED_KINDS = ("watch", "rating")


class EventIn(_Strict):
    """One thing a user did with an entity shown (or not) by an answer. ``event_id`` is the idempotency
    key: the same event sent twice is stored once."""

    event_id: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ENTITY_ID_PATTERN)]
    request_id: Id | None = Field(default=None, description="the answer it belongs to (its request_id)")
    user_id: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=ENTITY_ID_PATTERN)]
    canvas: Label
    entity_id: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=ENTITY_ID_PATTERN)]
    kind: Literal["impression", "click", "like", "watch", "rating"]
    value: float | None = Field(default=None, description="watch: seconds (>= 0); rating: the rating")
    ts: float | None = Field(default=None, description="seconds since the epoch (default: when received)")

    @field_validator("value", "ts")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> EventIn:
        if self.kind in VALUED_KINDS and self.value is None:
            raise ValueError(f"a {self.kind} event needs a value")
        if self.kind == "watch" and self.value is not None and self.value < 0:
            raise ValueError("watch seconds must be >= 0")
        if self.ts is not None and not MIN_EVENT_TS <= self.ts <= MAX_EVENT_TS:
            raise ValueError("ts must be seconds since the epoch (years 2000-2100)")
        return self


class EventBatch(_Strict):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS)
