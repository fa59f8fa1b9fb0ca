"""A user's state as a version stores it: the row its context tower makes of the user's profile and recent
history in each user canvas (what a known user's request reads instead of a context forward)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from monorec.bundle import ModelBundle, context_tensors
from monorec.schema import TitleLookup
from monorec.stream.changes import UserChange

__all__ = ["user_rows"]


@torch.no_grad()
def user_rows(
    bundle: ModelBundle, pairs: Sequence[tuple[str, UserChange]], titles: TitleLookup | None = None
) -> np.ndarray:
    """(canvas, user state) pairs -> their stored rows (N, F_c + D): each state as a record of its canvas
    (the profile fields this version declares, the user and, where the canvas reads one, the recent
    history) through the context tower, features then embedding."""
    feedback = bundle.config.feedback
    schema = bundle.schema
    declared = set(schema.field_names)
    records = []
    for canvas, state in pairs:
        context: dict[str, Any] = {k: v for k, v in state.profile if k in declared}
        context[feedback.user_field] = state.user_id
        if feedback.history_field is not None and state.history:
            context[feedback.history_field] = list(state.history)
        records.append(schema.normalize(canvas, context, titles))
    bundle.model.eval()
    feats, emb = bundle.model.encode_context(context_tensors(bundle.featurizer.transform_records(records)))
    return torch.cat([feats, emb], dim=1).numpy()
