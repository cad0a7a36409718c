"""The OpenAPI document: error responses of every route, and the /predict body schema and examples from
the serving model's manifest (rebuilt when the serving version changes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from gradeflow_shared.contracts import FeedbackRequest
from gradeflow_shared.errors import ErrorBody

from .online.ingest import ReadingsRequest, reading_schema
from .online.resolve import ID_FIELD, MAX_ID_LENGTH
from .schema import example_record

_ERRORS = {
    401: "Missing or wrong bearer token (WWW-Authenticate: Bearer)",
    404: "Unknown student: the feature store holds no features for the student_id (names the id)",
    409: "Conflict: a prediction already has a label (send overwrite: true), names the request ids; a "
    "reading dated more than a day ahead of the server's clock",
    413: "Request body larger than MAX_BODY_BYTES",
    415: "Content-Type is not application/json",
    422: "Invalid input: every problem names the field and the rule",
    503: "No model loaded yet, or the prediction log database is unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: the error body under each status."""
    out: dict[int | str, dict[str, Any]] = {c: {"model": ErrorBody, "description": _ERRORS[c]} for c in codes}
    if 401 in out:
        out[401]["headers"] = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}
    return out


# request bodies that routes parse themselves (declared with json_body) and whose schemas go in the document
BODY_MODELS: tuple[type[BaseModel], ...] = (FeedbackRequest, ReadingsRequest)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra=`` of a route that parses its JSON body itself (a model of BODY_MODELS)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def _add_body_models(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in BODY_MODELS:
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _id_schema() -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "description": "A student's id"}


def _student_ref(record: dict[str, Any]) -> dict[str, Any]:
    """A record by student id: the id and any features of the record (they override the stored ones)."""
    props = dict(record.get("properties", {}))
    props[ID_FIELD] = _id_schema()
    return {
        "type": "object",
        "description": "A student by id: the stored features of the feature store, overridden by any "
        "feature sent with it",
        "properties": props,
        "required": [ID_FIELD],
        "additionalProperties": False,
    }


def _readings_body(schema: dict[str, Any], layout: Any, max_records: int, max_string_length: int) -> None:
    """The readings body as the applied store's features define it (types, bounds; none other allowed)."""
    components = schema["components"]["schemas"]
    components["Reading"] = reading_schema(layout, max_string_length)
    components["ReadingsRequest"]["properties"]["readings"]["maxItems"] = max_records


def model_openapi(
    app: FastAPI, max_records: int, max_string_length: int = 200
) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` for this service: rebuilt when the serving model version changes, cached otherwise."""

    def openapi() -> dict[str, Any]:
        from fastapi.openapi.utils import get_openapi

        svc = getattr(app.state, "svc", None)
        model = svc.manager.current if svc is not None else None
        layout = svc.online.layout() if svc is not None else None
        key = (model.version if model else None, layout)
        cached = getattr(app.state, "openapi_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]  # type: ignore[no-any-return]
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _add_body_models(schema)
        if layout is not None:
            _readings_body(schema, layout, max_records, max_string_length)
        op = schema["paths"]["/predict"]["post"]
        batch: dict[str, Any] = {
            "type": "object",
            "properties": {
                "records": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/Record"},
                    "minItems": 1,
                    "maxItems": max_records,
                }
            },
            "required": ["records"],
            "additionalProperties": False,
        }
        if model is not None:
            record = model.validator.json_schema(model.manifest)
            example = example_record(model.manifest)
            actual = schema["components"]["schemas"]["FeedbackItem"]["properties"]["actual"]
            for bound, name in (
                (model.manifest.target_min, "minimum"),
                (model.manifest.target_max, "maximum"),
            ):
                if bound is not None:
                    actual[name] = bound
        else:
            record = {"type": "object", "description": "the schema appears once a model is loaded"}
            example = {"feature_a": 1.0, "feature_b": "category"}
        schema["components"]["schemas"]["Record"] = record
        schema["components"]["schemas"]["StudentRef"] = _student_ref(record)
        batch["properties"]["records"]["items"] = {"oneOf": [_ref("Record"), _ref("StudentRef")]}
        ids: dict[str, Any] = {
            "type": "object",
            "properties": {
                "student_ids": {
                    "type": "array",
                    "items": _id_schema(),
                    "minItems": 1,
                    "maxItems": max_records,
                }
            },
            "required": ["student_ids"],
            "additionalProperties": False,
        }
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"oneOf": [_ref("Record"), batch, _ref("StudentRef"), ids]},
                    "examples": {
                        "one record": {"value": example},
                        "batch": {"value": {"records": [example, example]}},
                        "by student id": {"value": {ID_FIELD: "s-0001"}},
                        "by student id, one feature sent": {
                            "value": {ID_FIELD: "s-0001", **dict(list(example.items())[:1])}
                        },
                        "batch of ids": {"value": {"student_ids": ["s-0001", "s-0002"]}},
                    },
                }
            },
        }
        app.state.openapi_cache = (key, schema)
        return schema

    return openapi
