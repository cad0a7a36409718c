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
from . import rollout, routes, service
from .config import TrainerSettings, get_settings
from .jobs import JobRunner, TrainFn
from .metrics import TrainerMetrics
from .progress import Progress
from .registry import Registry

logger = logging.getLogger(__name__)


def _bootstrap(
    settings: TrainerSettings, runner: JobRunner, stop: threading.Event, registry: Registry | None
) -> None:
    """Start-up repair before any champion change (``promotion.startup_repair``: finish or undo an
    interrupted promotion, make MODEL_DIR/current and champion.json match the registry's alias, tag
    versions without a gate decision, settle interrupted jobs, end dead runs); then, when the registry
    has no champion and TRAIN_ON_START, a first training; then the periodic check (``_watch``)."""
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
        if registry is not None:
            _watch(settings, runner, stop, registry)  # it reconciles once the registry answers
        return
    finally:
        pr.RECONCILED.set()
    if champ is None and settings.train_on_start and not stop.is_set():
        job, _ = runner.submit(RetrainRequest(reason="start-up: no champion in the registry"))
        logger.info("no champion for %s: first training job %s", settings.model_name, job.id)
    else:
        logger.info("champion of %s is version %s", settings.model_name, champ)
    _watch(settings, runner, stop, registry)


def _watch(settings: TrainerSettings, runner: JobRunner, stop: threading.Event, registry: Registry) -> None:
    """Every RECONCILE_INTERVAL seconds: does the export still match the registry's alias? The registry
    can change under a running trainer (MLflow restarted on another store, a backup restored, the alias
    moved by hand); then reconcile, and when the registry has no champion any more, train a first one."""
    interval = settings.reconcile_interval
    while interval > 0 and not stop.wait(interval):
        try:
            done = pr.watch(settings, registry, busy=lambda: runner.active() is not None)
            rollout.check_expiry(settings, registry)
        except GradeflowError as exc:  # MLflow away: /retrain refuses meanwhile; look again next time
            logger.debug("registry check skipped: %s", exc.message)
            continue
        except Exception:  # the loop must outlive any one failure
            logger.exception("registry check failed")
            continue
        if pr.WITHDREW in done and settings.train_on_start and not stop.is_set():
            job, _ = runner.submit(
                RetrainRequest(reason="the registry has no champion any more: first training")
            )
            logger.warning("the registry lost its champion (a new store?): first training job %s", job.id)


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

    metrics = TrainerMetrics(
        settings, active=lambda: app.state.runner.active() if hasattr(app.state, "runner") else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner = JobRunner(
            train_fn or real_train,
            state_file=settings.service_dir("trainer") / "jobs.json",
            on_finish=metrics.on_job_finished,
        )
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
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.own_training = train_fn is None  # POST /retrain probes the registry only for the real one
    install_error_handlers(app)
    install_docs(app)
    app.include_router(routes.router)
    return app
