"""The served contract in ``/openapi.json``: the canvases this server serves, each declared context field with
its type and limits, the entity types and the environment's k limit (clients and the property-based tests
generate requests from it)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from monorec.config import FieldSpec, ProjectConfig
from monorec.environments import EnvironmentSpec

__all__ = ["contract_openapi"]


def contract_openapi(app: FastAPI, config: ProjectConfig, env: EnvironmentSpec) -> None:
    """Makes ``/openapi.json`` state this server's contract: the canvases it serves, each declared context
    field with its type and limits, the entity types and the environment's k limit (clients and the
    property-based tests generate requests from it)."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = base()
        schemas = spec["components"]["schemas"]
        request = schemas["RecommendRequest"]["properties"]
        request["canvas"] = {"type": "string", "enum": [c.name for c in config.canvases if env.serves(c.name)]}
        request["k"] = {"type": "integer", "minimum": 1, "maximum": env.max_k, "default": 10}
        request["context"] = {
            "type": "object",
            "additionalProperties": False,
            "description": "any subset of the unified context fields (unknown ids are cold start)",
            "properties": {f.name: _field_schema(f) for f in config.fields},
        }
        types = {"type": "array", "items": {"type": "string", "enum": list(config.entity_types)}, "maxItems": 64}
        schemas["Candidates"]["properties"]["entity_types"] = {"anyOf": [types, {"type": "null"}]}
        app.openapi_schema = spec
        return spec

    app.openapi_schema = None
    app.openapi = openapi  # type: ignore[method-assign]


def _field_schema(f: FieldSpec) -> dict[str, Any]:
    if f.kind == "numeric":
        return {"anyOf": [{"type": "number"}, {"type": "null"}]}
    if f.kind == "id_list":
        ids = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 256}, "maxItems": 1000}
        return {"anyOf": [ids, {"type": "null"}]}
    limit = f.max_length if f.kind == "text" else 256
    return {"anyOf": [{"type": "string", "maxLength": limit}, {"type": "null"}], "description": f.description}
