"""Online serving over the deployed versions (DESIGN section 7).

- :mod:`~monorec.serving.engine`: :class:`ServingEngine`, the framework-free request path;
- :mod:`~monorec.serving.messages`: the request and answer contract (pydantic models);
- :mod:`~monorec.serving.rules`: business rules as small composable functions;
- :mod:`~monorec.serving.answers`: answered entities, filters on descriptions, the popular fallback answer;
- :mod:`~monorec.serving.app`: the HTTP API (``create_app``; imported on its own, it brings in FastAPI), with
  :mod:`~monorec.serving.openapi` (the served contract in the spec) and :mod:`~monorec.serving.body_limit`;
- :mod:`~monorec.serving.batcher`, :mod:`~monorec.serving.cache`, :mod:`~monorec.serving.precomputed`,
  :mod:`~monorec.serving.metrics`: micro-batching, answer caches, precomputed mode, Prometheus metrics.
"""

from monorec.serving.engine import ServingEngine
from monorec.serving.messages import Candidates, RecommendRequest, RecommendResponse, ScoredEntity

__all__ = ["Candidates", "RecommendRequest", "RecommendResponse", "ScoredEntity", "ServingEngine"]
