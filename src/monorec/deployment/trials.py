"""Canary and shadow trials of a candidate version beside the serving one (DESIGN section 6).

A :class:`Trial` names a ready (validated, loaded, fed by its loader) version and how it takes traffic:

- ``canary``: a ``share`` of requests is answered by the candidate, sticky per value of ``sticky_by``
  (a user always lands on the same side: a hash of the value, not a coin per request); requests without
  that field are assigned by a hash of their whole context. Each request is still pinned to ONE version.
- ``shadow``: every request is answered by the serving version; the candidate scores the same request off
  the request path and the two answers are compared (overlap@k, rank correlation, latency, errors).

:class:`~monorec.deployment.trial_control.TrialController` starts, promotes and aborts them; the
serving engine measures both sides and aborts a trial whose candidate breaches the environment's thresholds
(see :mod:`monorec.serving.trial_stats`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["Trial", "TrialMode"]

TrialMode = Literal["canary", "shadow"]


@dataclass(frozen=True)
class Trial:
    version: str
    mode: TrialMode
    share: float = 0.0  # canary: the share of requests (of sticky keys) the candidate answers
    sticky_by: str = "user_id"
    started: float = 0.0

    def takes(self, context: Mapping[str, Any]) -> bool:
        """Whether the candidate answers a request with this context (canary only; deterministic)."""
        if self.mode != "canary" or self.share <= 0:
            return False
        value = context.get(self.sticky_by)
        key = str(value) if value not in (None, "") else json.dumps(context, sort_keys=True, default=str)
        digest = hashlib.blake2b(f"{self.version}\x1f{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.share

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Trial:
        return cls(**json.loads(text))
