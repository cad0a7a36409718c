"""The inference HTTP API: thin routes over model.py (predict), predlog.py (log, feedback) and metrics.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from gradeflow_shared.contracts import FeedbackRequest, FeedbackResponse, PredictionPage, PredictResponse
from gradeflow_shared.errors import InvalidInput, ModelNotLoaded, install_error_handlers
from gradeflow_shared.logging import configure_logging
from gradeflow_shared.webdocs import install_docs

from .config import InferenceSettings, get_settings
from .metrics import Metrics, MetricsMiddleware
from .model import LoadedModel, ModelManager
from .predlog import PredictionLog, new_batch_key, predict_response
from .schema import Batch, example_record

logger = logging.getLogger(__name__)

INLINE_MAX_RECORDS = 16  # smaller batches are validated and predicted on the event loop (~0.1 ms)

PREDICT_DOC = """Predict one record or a batch.

* one record: a JSON object with every feature of the serving model (see GET /model for the schema);
* a batch: `{"records": [record, ...]}` (at most MAX_BATCH_RECORDS records).

The answer names the model version that produced every prediction and one request id per record
(use it for POST /feedback). Validation: a missing field, an unknown field, a wrong type or a value
outside the manifest's bounds -> 422 naming the field, the rule and (batches) the record index.
Categories not seen in training are accepted and predicted through the encoder's unknown handling
(counted in `inference_unseen_categories_total`). `null` is accepted for nullable features (imputed).
503 while no model export is loaded.
"""


class ServiceState:
    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.log = PredictionLog(
            settings.db_url(),
            batch_size=settings.log_batch_size,
            queue_max=settings.log_queue_max,
            flush_interval=settings.log_flush_interval,
            shutdown_timeout=settings.log_shutdown_timeout,
        )
        self.metrics = Metrics(self.log_stats)
        self.manager = ModelManager(
            settings.models_path,
            interval=settings.reload_interval,
            tolerance=settings.verify_tolerance,
            verify_rows=settings.verify_rows,
            predict_path=settings.predict_path,
            on_reload=self.metrics.on_reload,
        )
        self.log_enabled = settings.inference_log_enabled
        self.max_records = settings.max_batch_records
        # the one inference thread for big batches (small ones run inline on the event loop)
        self.executor = ThreadPoolExecutor(
            max_workers=settings.inference_threads, thread_name_prefix="inference"
        )

    def log_stats(self) -> dict[str, Any]:
        s = self.log.stats()
        s["enabled"] = self.log_enabled
        return s


def _state(request: Request) -> ServiceState:
    return request.app.state.svc  # type: ignore[no-any-return]


StateDep = Annotated[ServiceState, Depends(_state)]


def _no_model(state: ServiceState) -> ModelNotLoaded:
    attempt = state.manager.last_attempt
    msg = f"no model is loaded yet: waiting for an export at {state.manager.model_dir}/current"
    if attempt is not None and not attempt.ok:
        msg += f" (last export refused: {attempt.error})"
    return ModelNotLoaded(msg, details={"last_reload_attempt": attempt.as_dict() if attempt else None})


def _parse(body: bytes, model: LoadedModel, max_records: int) -> tuple[list[Any], bool]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"body is not valid JSON: {exc}",
            details=[{"field": "", "rule": "json_invalid", "message": str(exc)}],
        ) from None
    if isinstance(data, dict):
        if "records" in data and "records" not in model.validator.names:
            records = data["records"]
            extra = [k for k in data if k != "records"]
            if extra:
                raise InvalidInput(
                    f"{extra[0]}: unknown field next to 'records'",
                    details=[
                        {"field": k, "rule": "extra_forbidden", "message": "unknown field"} for k in extra
                    ],
                )
            if not isinstance(records, list):
                raise InvalidInput(
                    "records: must be an array of records",
                    details=[{"field": "records", "rule": "list_type", "message": "must be an array"}],
                )
            if not records:
                raise InvalidInput(
                    "records: at least one record required",
                    details=[{"field": "records", "rule": "too_short", "message": "at least 1 record"}],
                )
            if len(records) > max_records:
                raise InvalidInput(
                    f"records: at most {max_records} records per request, got {len(records)}",
                    details=[{"field": "records", "rule": "too_long", "message": f"at most {max_records}"}],
                )
            return records, True
        return [data], False
    raise InvalidInput(
        'body must be a JSON object (one record) or {"records": [...]}',
        details=[{"field": "", "rule": "model_type", "message": "expected a JSON object"}],
    )


def _run_predict(model: LoadedModel, records: list[Any], batch: bool) -> tuple[Batch, list[float]]:
    b = model.validator.validate(records, batch)
    return b, model.predict(b)


def create_app(settings: InferenceSettings | None = None) -> FastAPI:
    """The inference app; long-lived resources (model watcher, log writer) live in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cfg = settings or get_settings()
        if not logging.getLogger().handlers:  # uvicorn worker processes (INFERENCE_WORKERS > 1) start bare
            configure_logging(cfg.log_level, cfg.log_json, service="inference")
        t0 = time.perf_counter()
        state = ServiceState(cfg)
        app.state.svc = state
        # the first load verifies the ONNX path only (fast cold start); the watcher then verifies and
        # attaches the scikit-learn path in the background
        state.manager.check_once(fast=True)
        state.log.start()  # opens the database and runs the migrations in its own thread (rows queue meanwhile)
        logger.info(
            "start-up took %.2fs (model %s)",
            time.perf_counter() - t0,
            state.manager.current.version if state.manager.current else None,
        )
        if state.manager.current is None:
            logger.warning("no model export at %s yet: /ready answers 503 until one appears", cfg.models_path)
        state.manager.start()
        try:
            yield
        finally:
            state.manager.stop()
            state.executor.shutdown(wait=True)
            state.log.stop()  # flushes every queued row

    app = FastAPI(
        title="GradeFlow inference",
        version="0.1.0",
        description="Predicts a student's final grade with the exported model; hot reload, prediction log, "
        "feedback. See services/inference/README.md.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_docs(app)
    app.add_middleware(
        MetricsMiddleware, metrics_getter=lambda: getattr(getattr(app.state, "svc", None), "metrics", None)
    )

    @app.post(
        "/predict",
        summary="Predict one record or a batch",
        description=PREDICT_DOC,
        response_model=PredictResponse,
        responses={
            422: {"description": "Invalid input (field, rule, index)"},
            503: {"description": "No model"},
        },
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}},
    )
    async def predict(request: Request) -> Response:
        t0 = time.perf_counter()
        state: ServiceState = request.app.state.svc
        model = state.manager.current  # one read of the reference: this request uses this model throughout
        if model is None:
            raise _no_model(state)
        body = await request.body()
        records, batch = _parse(body, model, state.max_records)
        if len(records) <= INLINE_MAX_RECORDS:
            b, preds = _run_predict(model, records, batch)
        else:
            loop = asyncio.get_running_loop()
            b, preds = await loop.run_in_executor(state.executor, _run_predict, model, records, batch)
        version = model.manifest.version
        key = new_batch_key()
        latency_ms = (time.perf_counter() - t0) * 1000.0
        if state.log_enabled:
            # one log entry per request: the validated body as received (a batch body as is, one record
            # wrapped in [...]) and the predictions; the writer thread does the rest
            blob = body if batch else b"[" + body + b"]"
            state.log.submit((key, time.time(), version, blob, preds, latency_ms, b.n))
        m = state.metrics
        m.predictions.labels(str(version)).inc(b.n)
        if b.unseen:
            for feat, cnt in b.unseen.items():
                m.unseen.labels(feat).inc(cnt)
        # request ids = batch key + index (predlog.request_ids), encoded without a loop per record
        return Response(predict_response(version, key, preds), media_type="application/json")

    @app.post("/feedback", response_model=FeedbackResponse, summary="Store true outcomes for request ids")
    def post_feedback(body: FeedbackRequest, state: StateDep) -> FeedbackResponse:
        return state.log.add_feedback(body.items)

    @app.get("/predictions", response_model=PredictionPage, summary="Page through logged predictions")
    def get_predictions(
        state: StateDep,
        since_id: Annotated[int | None, Query(ge=0, description="Only rows with id > since_id")] = None,
        since: Annotated[datetime | None, Query(description="Only rows logged at or after this time")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        labelled: Annotated[
            bool | None, Query(description="true: with feedback only; false: without")
        ] = None,
    ) -> PredictionPage:
        return state.log.page(since_id, since, limit, labelled)

    @app.get("/model", summary="The serving model: version, metrics, schema, reload status")
    def get_model(state: StateDep) -> dict[str, Any]:
        model = state.manager.current
        if model is None:
            raise _no_model(state)
        attempt = state.manager.last_attempt
        return {
            **model.info(),
            "schema": model.validator.json_schema(model.manifest),
            "features": [f.model_dump() for f in model.manifest.features],
            "last_reload_attempt": attempt.as_dict() if attempt else None,
            "prediction_log": state.log_stats(),
        }

    @app.get("/health", summary="Alive")
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

    @app.get("/ready", summary="Ready: a model is loaded (503 otherwise)")
    def ready(state: StateDep) -> JSONResponse:
        model = state.manager.current
        if model is None:
            raise _no_model(state)
        return JSONResponse({"status": "ready", "model_version": model.version})

    @app.get("/metrics", summary="Prometheus metrics")
    def metrics(state: StateDep) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def custom_openapi() -> dict[str, Any]:
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

    app.openapi = custom_openapi  # type: ignore[method-assign]
    return app
