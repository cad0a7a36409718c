"""Operations: GET /model, /health, /ready, /metrics.

What is served vs the registry (``champion.json``, see ``model.serving_status``) appears on all three:
``fallback`` + ``reason`` when the export ``current`` points to could not be loaded and an older valid one
serves instead, ``consistent: false`` when the champion marker names another version or run id.

Readiness policy: ``/ready`` answers 503 only while NO model is loaded. A fallback or an inconsistent
export is ready (200) with ``warnings``: it is a verified model; the alternative is a replica that
answers nothing. Inference cannot tell a promotion in flight (the marker written a moment before or after
``current`` moves) from a stale one, so a 503 there would also take replicas out of rotation at every
promotion. The disagreement is loud instead: ``/ready``, ``/health``, ``/model`` and a WARNING log line.
"""

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
    st = state.manager.status()
    return {
        **model.info(),
        "consistent": st["consistent"],
        "champion": st["champion"],
        "warnings": st["warnings"],
        "schema": model.validator.json_schema(model.manifest),
        "features": [f.model_dump() for f in model.manifest.features],
        "last_reload_attempt": attempt.as_dict() if attempt else None,
        "prediction_log": state.log_stats(),
    }


def _truth(st: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``ModelManager.status()`` that /health and /ready both show."""
    champion = st["champion"] or {}
    return {
        "fallback": st["fallback"],
        "consistent": st["consistent"],
        "champion_version": champion.get("version"),
        "champion_run_id": champion.get("run_id"),
        "warnings": st["warnings"],
    }


@router.get("/health", summary="Alive")
def health(state: StateDep) -> dict[str, Any]:
    model = state.manager.current
    s = state.log_stats()
    st = state.manager.status()
    return {
        "status": "ok",
        "service": "inference",
        "model_loaded": model is not None,
        "model_version": model.version if model else None,
        "model_run_id": st["serving_run_id"],
        **_truth(st),
        "log_queue_depth": s["queue_depth"],
        "log_dropped": s["dropped"],
        "log_lost_on_crash": s["lost_on_crash"],
        "log_replayed_on_start": s["replayed_on_start"],
        "log_db_error": s["db_error"],
    }


@router.get(
    "/ready",
    summary="Ready: a model is loaded (503 otherwise); fallback / consistency with the champion marker",
    responses=error_responses(503),
)
def ready(state: StateDep) -> JSONResponse:
    """200 while a verified model is loaded, also a fallback or one that disagrees with ``champion.json``
    (then ``fallback``/``consistent`` say so and ``warnings`` says why; see the module docstring for the
    policy); 503 ``MODEL_NOT_LOADED`` only when nothing can be served."""
    model = state.manager.current
    if model is None:
        raise state.no_model()
    st = state.manager.status()
    return JSONResponse(
        {
            "status": "ready",
            "model_version": model.version,
            "run_id": st["serving_run_id"],
            "reason": st["reason"],
            **_truth(st),
        }
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(state: StateDep) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/rollout",
    summary="The rollout this instance serves: stage, versions, per-arm records, errors and latency",
    description="Per arm (champion, candidate) in the current stage: records, errors (records the candidate "
    "could not predict; the champion answered them), p50/p99 prediction latency over the last 2000 calls; "
    "the shadow queue's depth, predictions, drops. The monitor's abort rule reads it.",
)
def get_rollout(state: StateDep) -> dict[str, Any]:
    return state.rollout.status()
