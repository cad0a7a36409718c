"""Operations: GET /model, /health, /ready, /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ...openapi import error_responses
from ..deps import StateDep

router = APIRouter()


@router.get(
    "/model",
    summary="The serving model: version, metrics, schema, reload status",
    responses=error_responses(503),
)
def get_model(state: StateDep) -> dict[str, Any]:
    model = state.manager.current
    if model is None:
        raise state.no_model()
    attempt = state.manager.last_attempt
    return {
        **model.info(),
        "schema": model.validator.json_schema(model.manifest),
        "features": [f.model_dump() for f in model.manifest.features],
        "last_reload_attempt": attempt.as_dict() if attempt else None,
        "prediction_log": state.log_stats(),
    }


@router.get("/health", summary="Alive")
def health(state: StateDep) -> dict[str, Any]:
    model = state.manager.current
    s = state.log_stats()
    return {
        "status": "ok",
        "service": "inference",
        "model_loaded": model is not None,
        "model_version": model.version if model else None,
        "log_queue_depth": s["queue_depth"],
        "log_dropped": s["dropped"],
        "log_db_error": s["db_error"],
    }


@router.get("/ready", summary="Ready: a model is loaded (503 otherwise)", responses=error_responses(503))
def ready(state: StateDep) -> JSONResponse:
    model = state.manager.current
    if model is None:
        raise state.no_model()
    return JSONResponse({"status": "ready", "model_version": model.version})


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(state: StateDep) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
