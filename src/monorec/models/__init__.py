"""The multi-task model: context tower, item tower, multi-task ranker (shared-bottom, MMoE, PLE)."""

from monorec.models.model import MonorecModel, build_model, model_kwargs

__all__ = ["MonorecModel", "build_model", "model_kwargs"]
