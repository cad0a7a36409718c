"""The trainer's HTTP app (FastAPI): settings check, job runner lifespan, start-up training.

The routes (thin, documented, admin ones behind the bearer token) are in ``routes``; the work is
in ``service`` and ``jobs``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gradeflow_shared.contracts import RetrainRequest, TrainResult
from gradeflow_shared.errors import GradeflowError, install_error_handlers
from gradeflow_shared.settings import require_secret
from gradeflow_shared.webdocs import install_docs

from . import mlflow_io as mio
from . import promotion as pr
from . import routes, service
from .config import TrainerSettings, get_settings
from .jobs import JobRunner, TrainFn
from .progress import Progress
from .registry import Registry

logger = logging.getLogger(__name__)


def _bootstrap(
    settings: TrainerSettings, runner: JobRunner, stop: threading.Event, registry: Registry | None
) -> None:
    """Start-up repair before any champion change (``promotion.startup_repair``: finish or undo an
    interrupted promotion, make MODEL_DIR/current and champion.json match the registry's alias, tag
    versions without a gate decision, settle interrupted jobs, end dead runs); then, when the registry
    has no champion and TRAIN_ON_START, a first training."""
    champ: int | None = None
    try:
        if registry is None:
            mio.wait_for_server(settings)
            if stop.is_set():
                return
            registry = service.mlflow_registry(settings)
        with service.CHAMPION_LOCK:
            active = runner.active()
            alive = active.id if active is not None and active.state == "running" else None
            pr.startup_repair(settings, registry, runner.settle_interrupted, alive_job=alive)
        champ = registry.champion_version()
    except GradeflowError as exc:
        logger.error("start-up reconciliation with the registry failed: %s", exc.message)
        return
    finally:
        pr.RECONCILED.set()
    if champ is None and settings.train_on_start and not stop.is_set():
        job, _ = runner.submit(RetrainRequest(reason="start-up: no champion in the registry"))
        logger.info("no champion for %s: first training job %s", settings.model_name, job.id)
    else:
        logger.info("champion of %s is version %s", settings.model_name, champ)


def create_app(
    settings: TrainerSettings | None = None,
    train_fn: TrainFn | None = None,
    registry: Registry | None = None,
) -> FastAPI:
    """The app; ``train_fn`` replaces the real training and ``registry`` the MLflow server (tests)."""
    settings = settings or get_settings()
    require_secret("ADMIN_TOKEN", settings.admin_token)

    def real_train(request: RetrainRequest, progress: Progress) -> TrainResult:
        return service.train_once(settings, request, progress, registry=registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner = JobRunner(train_fn or real_train, state_file=settings.service_dir("trainer") / "jobs.json")
        runner.start()
        app.state.runner = runner
        stop = threading.Event()
        pr.RECONCILED.clear()  # champion changes wait for the start-up repair
        threading.Thread(
            target=_bootstrap, args=(settings, runner, stop, registry), name="trainer-bootstrap", daemon=True
        ).start()
        try:
            yield
        finally:
            stop.set()
            pr.RECONCILED.set()
            runner.stop()

    app = FastAPI(
        title="GradeFlow trainer",
        version="0.1.0",
        description="Trains, evaluates, registers (MLflow), gates, promotes and exports the student-grade "
        "model. Admin routes need the ADMIN_TOKEN as a bearer token (Authorize).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.own_training = train_fn is None  # POST /retrain probes the registry only for the real one
    install_error_handlers(app)
    install_docs(app)
    app.include_router(routes.router)
    return app
