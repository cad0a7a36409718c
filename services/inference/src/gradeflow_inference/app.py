"""The inference app: the lifespan (model watcher, log writer) and the routers assembled in ``create_app``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gradeflow_shared.errors import install_error_handlers
from gradeflow_shared.logging import configure_logging
from gradeflow_shared.webdocs import install_docs

from .api.guard import RequestGuard
from .api.routes import features, labels, ops, predict
from .config import InferenceSettings, check_secrets, get_settings
from .metrics import MetricsMiddleware
from .openapi import model_openapi
from .state import ServiceState

logger = logging.getLogger(__name__)


def create_app(settings: InferenceSettings | None = None) -> FastAPI:
    """The inference app; long-lived resources (model watcher, log writer) live in the lifespan.

    Refuses to start (ConfigError) with a placeholder or short ADMIN_TOKEN / LABELLER_TOKEN."""
    cfg = settings or get_settings()
    check_secrets(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
        state.materializer.start()
        state.rollout.shadow.start()
        # the online store's client library (Redis) is imported now, off the start-up path and before the
        # first by-id request
        threading.Thread(target=state.online.warm, name="online-warm", daemon=True).start()
        try:
            yield
        finally:
            state.materializer.stop()
            state.online.close()
            state.journal.close()
            state.manager.stop()
            state.rollout.shadow.stop()
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
        RequestGuard,
        max_body_bytes=cfg.max_body_bytes,
        json_paths=frozenset({"/predict", "/feedback", "/readings"}),
    )
    app.add_middleware(
        MetricsMiddleware, metrics_getter=lambda: getattr(getattr(app.state, "svc", None), "metrics", None)
    )
    predict.install(app)  # the hot path: on the app itself (see predict.install)
    for router in (labels.router, ops.router, features.router):
        app.include_router(router)
    app.openapi = model_openapi(app, cfg.max_batch_records, cfg.max_string_length)  # type: ignore[method-assign]
    return app
