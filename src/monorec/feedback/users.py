"""Users' states from what they do: each event (or profile write) becomes the user's whole new state, a
:class:`~monorec.stream.changes.UserChange` on the change log, so the users table and every live
version's user store (and, later, every replica) follow it within a loader poll.

The state is the user's stored profile and their most recent events of the history kind (from the
feedback journal, where events are durable first). Reading that state and taking its revision happen
under one lock, so of two concurrent writes for a user the later revision always holds the later state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from monorec.config import ProjectConfig
from monorec.deployment import Deployment
from monorec.errors import RequestError
from monorec.feedback.journal import EventRecord, FeedbackJournal
from monorec.schema import ContextSchema
from monorec.stream.changes import MAX_HISTORY, UserChange

__all__ = ["UserStates", "check_profile"]


class UserStates:
    """Publishes user changes for a deployment from its feedback journal (one per owner process)."""

    def __init__(self, deployment: Deployment, journal: FeedbackJournal) -> None:
        self.deployment, self.journal = deployment, journal
        self._lock = threading.Lock()
        self._last_revision = 0

    def _revision(self) -> int:
        """Microseconds since the epoch, strictly increasing within the process (a restart continues
        above: the clock has moved on)."""
        self._last_revision = max(self._last_revision + 1, time.time_ns() // 1000)
        return self._last_revision

    def _state(self, config: ProjectConfig, user_id: str, profile: Mapping[str, Any] | None) -> UserChange:
        stored = self.deployment.catalogue.user(user_id)
        fields = dict(stored.profile) if stored is not None else {}
        if profile is not None:
            fields = dict(profile)
        fb = config.feedback
        limit = config.field(fb.history_field).max_tokens if fb.history_field is not None else 0
        history = self.journal.recent_entities(user_id, fb.history_kind, min(limit, MAX_HISTORY)) if limit else []
        return UserChange(user_id, self._revision(), tuple(sorted(fields.items())), tuple(history))

    def after_events(self, config: ProjectConfig, events: Sequence[EventRecord]) -> list[UserChange]:
        """Publishes the new state of each user the (already journaled) events touch: their history when an
        event is of the history kind, and a user the store does not know yet is created. Returns the states
        published."""
        kind = config.feedback.history_kind
        users = [
            u
            for u in dict.fromkeys(e.user_id for e in events)
            if any(e.user_id == u and e.kind == kind for e in events) or self.deployment.catalogue.user(u) is None
        ]
        if not users:
            return []
        with self._lock:
            states = [self._state(config, u, None) for u in users]
            self.deployment.publish(states)
        return states

    def write_profile(self, config: ProjectConfig, user_id: str, profile: Mapping[str, Any]) -> tuple[int, str]:
        """Replaces the user's profile (their history stays what their events made it); returns the
        revision and the offset.

        Raises:
            RequestError: a field is not declared, is the user or history field, or its value does not fit.
        """
        check_profile(config, ContextSchema.from_config(config), profile)
        with self._lock:
            state = self._state(config, user_id, profile)
            return state.revision, self.deployment.publish([state])[0]


def check_profile(config: ProjectConfig, schema: ContextSchema, profile: Mapping[str, Any]) -> None:
    """A profile names declared context fields other than the user and the history, each value valid for
    its field (checked as a canvas that reads the field would check it in a request).

    Raises:
        RequestError: naming ``profile.<field>``.
    """
    fb = config.feedback
    for name, value in profile.items():
        if name in (fb.user_field, fb.history_field) or name not in schema.field_names:
            raise RequestError(f"profile.{name}", "not a profile field (a declared context field other than the user)")
        canvas = next((c.name for c in config.canvases if name in c.fields), None)
        if canvas is None:
            raise RequestError(f"profile.{name}", "no canvas reads this field")
        try:
            schema.normalize(canvas, {name: value})
        except RequestError as exc:
            raise RequestError(f"profile.{name}", exc.reason) from None
