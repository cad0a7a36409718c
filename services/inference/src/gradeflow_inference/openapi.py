"""The OpenAPI document: the /predict body schema and examples come from the serving model's manifest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from .schema import example_record


def model_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` for this service: rebuilt when the serving model version changes, cached otherwise."""

    def openapi() -> dict[str, Any]:
        from fastapi.openapi.utils import get_openapi

        svc = getattr(app.state, "svc", None)
        model = svc.manager.current if svc is not None else None
        key = model.version if model else None
        cached = getattr(app.state, "openapi_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]  # type: ignore[no-any-return]
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        op = schema["paths"]["/predict"]["post"]
        if model is not None:
            record = model.validator.json_schema(model.manifest)
            example = example_record(model.manifest)
            body_schema: dict[str, Any] = {
                "oneOf": [
                    {"$ref": "#/components/schemas/Record"},
                    {
                        "type": "object",
                        "properties": {
                            "records": {"type": "array", "items": {"$ref": "#/components/schemas/Record"}}
                        },
                        "required": ["records"],
                        "additionalProperties": False,
                    },
                ]
            }
            schema.setdefault("components", {}).setdefault("schemas", {})["Record"] = record
        else:
            example = {"feature_a": 1.0, "feature_b": "category"}
            body_schema = {"type": "object", "description": "the schema appears once a model is loaded"}
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": body_schema,
                    "examples": {
                        "one record": {"value": example},
                        "batch": {"value": {"records": [example, example]}},
                    },
                }
            },
        }
        app.state.openapi_cache = (key, schema)
        return schema

    return openapi
