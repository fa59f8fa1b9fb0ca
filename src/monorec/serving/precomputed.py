"""Precomputed mode: top-K answers batch-scored per key (a user, a source item, a category) and refreshed
on a schedule, for environments that trade freshness for cost (``mode = "precomputed"``).

Each table is scored by ONE version through the same model path as online requests (rules included) and
serves only while that version is the serving one: after a switch the engine answers online until the
new version's tables are scored. A key without a table entry (a new user) is answered online.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import TypeAdapter

from monorec.serving.messages import Candidates, RecommendRequest, ScoredEntity
from monorec.serving.model_path import ModelPath, Work

if TYPE_CHECKING:
    from monorec.deployment.version import ServingVersion

__all__ = ["PrecomputedTables"]

SCORE_BATCH = 256
log = logging.getLogger(__name__)
_ITEMS = TypeAdapter(list[ScoredEntity])


class PrecomputedTables:
    """(canvas, key value) -> ranked entities of one version; scored in a background thread."""

    def __init__(self, model: ModelPath) -> None:
        self.model = model
        self.env = model.env
        self.version: str | None = None
        # entries are JSON bytes: one object each where live models would be ~100 per key, all walked by every
        # full garbage collection (tables hold up to precompute_max_keys x precompute_k entities)
        self._tables: dict[tuple[str, str], bytes] = {}
        self.refreshes = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="monorec-precompute", daemon=True)
        self._thread.start()

    def answer(self, work: Work, version: str) -> list[ScoredEntity] | None:
        """The stored answer for this request, or None (not this version's table, no entry, explicit
        candidates, or too few left after the request's filters)."""
        request = work.request
        field = self.env.precompute.get(request.canvas)
        if field is None or request.candidates.ids is not None:
            return None
        if self.version != version:
            self._wake.set()  # a switch happened: score the new version's tables
            return None
        value = request.context.get(field)
        raw = self._tables.get((request.canvas, str(value))) if value is not None else None
        if raw is None:
            return None
        stored = _ITEMS.validate_json(raw)
        where = work.where
        out = [
            e
            for e in stored
            if e.entity_id not in work.excluded
            and (where is None or not where.entity_types or e.entity_type in where.entity_types)
            and (where is None or not where.categories or any(c in where.categories for c in e.categories))
        ]
        if len(out) < request.k and len(stored) == self.env.precompute_k:
            return None  # filtered too far: the online path can retrieve deeper
        return out[: request.k]

    def refresh(self) -> None:
        """Scores every table with the serving version and swaps them in at once."""
        with self.model.deployment.router.pin() as version:
            tables: dict[tuple[str, str], bytes] = {}
            for canvas, field in self.env.precompute.items():
                values = version.bundle.featurizer.known_values(field)[: self.env.precompute_max_keys]
                for start in range(0, len(values), SCORE_BATCH):
                    chunk = values[start : start + SCORE_BATCH]
                    for value, items in zip(chunk, self._score(version, canvas, field, chunk), strict=True):
                        tables[(canvas, value)] = _ITEMS.dump_json(items)
            self._tables, self.version = tables, version.name
            self.refreshes += 1

    def _score(
        self, version: ServingVersion, canvas: str, field: str, values: Sequence[str]
    ) -> list[list[ScoredEntity]]:
        k = self.env.precompute_k
        works = [
            self.model.validate(
                RecommendRequest(canvas=canvas, context={field: v}, k=k, candidates=Candidates()), version, max_k=k
            )
            for v in values
        ]
        out = []
        for result in self.model.rank(version, works):
            if isinstance(result, BaseException):
                raise result
            out.append(result.items)
        return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.model.deployment.router.current is not None:
                try:
                    self.refresh()
                except Exception:  # requests are answered online meanwhile; retried at the next tick
                    log.exception("scoring the precomputed tables failed")
            timeout = 1.0 if self.version is None else (self.env.refresh_s or None)  # 0: only on a switch
            self._wake.wait(timeout)
            self._wake.clear()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
