"""What a request's context takes from the user's stored state: their recent history (the users table,
kept fresh by user changes through the change log) and, in canvases an environment answers from stored
user encodings, the version's stored row instead of a context-tower forward (see :mod:`monorec.users`)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch

from monorec.deployment.version import ServingVersion
from monorec.environments import ModelRuntime
from monorec.serving.messages import RecommendRequest
from monorec.stage_times import StageTimes, timed
from monorec.stream.catalogue import CatalogueStore

__all__ = ["encode_contexts", "with_recent_history"]


def with_recent_history(request: RecommendRequest, version: ServingVersion, users: CatalogueStore) -> RecommendRequest:
    """The request with the user's recent history as stored, when it names the user, gives no history and
    its canvas reads one (``[feedback] history_field``): what the user just did (an event updates the
    users table within a loader poll) shapes their next answer, without retraining. Unchanged otherwise."""
    fb = version.bundle.config.feedback
    field = fb.history_field
    if field is None or request.context.get(field) not in (None, "", []):
        return request
    user = request.context.get(fb.user_field)
    canvas = next((c for c in version.bundle.config.canvases if c.name == request.canvas), None)
    if not isinstance(user, str) or not user or canvas is None or field not in canvas.fields:
        return request
    state = users.user(user)
    if state is None or not state.history:
        return request
    limit = version.bundle.config.field(field).max_tokens
    recent: list[str | int] = list(state.history[-limit:])
    return request.model_copy(update={"context": {**request.context, field: recent}})


def encode_contexts(
    version: ServingVersion,
    requests: Sequence[tuple[str, dict[str, Any]]],
    stored_canvases: Collection[str],
    *,
    stages: StageTimes | None = None,
    runtime: ModelRuntime = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(context features (B, F_c), embeddings (B, D)) of a batch of (canvas, normalized record).

    A request of a canvas in ``stored_canvases`` that names a user the version stores takes the stored row
    (encoded from the user's stored profile and history: the request's other context fields then only
    reach rules and filters); every other request goes through the context tower, in one forward. The
    time of each step goes to ``stages`` ("stored_users", "featurize", "context_tower")."""
    user_field = version.bundle.config.feedback.user_field
    by_canvas: dict[str, list[int]] = {}
    for i, (canvas, record) in enumerate(requests):
        if canvas in stored_canvases and record.get(user_field) is not None:
            by_canvas.setdefault(canvas, []).append(i)
    stored: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    with timed(stages if by_canvas else None, "stored_users"):
        for canvas, rows in by_canvas.items():
            found, feats, embs = version.stored_users(canvas, [str(requests[i][1][user_field]) for i in rows])
            for j in np.flatnonzero(found):
                stored[rows[j]] = (feats[j], embs[j])
    if not stored:
        return version.encode_records([record for _, record in requests], stages=stages, runtime=runtime)
    online = [i for i in range(len(requests)) if i not in stored]
    some = next(iter(stored.values()))
    cf = torch.empty((len(requests), some[0].shape[0]))
    ce = torch.empty((len(requests), some[1].shape[0]))
    for i, (f, e) in stored.items():
        cf[i], ce[i] = f, e
    if online:
        f, e = version.encode_records([requests[i][1] for i in online], stages=stages, runtime=runtime)
        cf[online], ce[online] = f, e
    return cf, ce
