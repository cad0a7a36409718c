"""The trainer's HTTP API (FastAPI). Routes are thin: the work is in ``service`` and ``jobs``.

Admin endpoints (``POST /retrain``, ``/promote``, ``/rollback``) need
``Authorization: Bearer <ADMIN_TOKEN>``; without it, or with a wrong one, they answer 401
and do nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.concurrency import run_in_threadpool

from gradeflow_shared.contracts import (
    Job,
    PromoteRequest,
    PromotionEvent,
    RetrainRequest,
    RollbackRequest,
    TrainResult,
)
from gradeflow_shared.errors import GradeflowError, NotFound, Unauthorized, install_error_handlers
from gradeflow_shared.settings import bearer_matches, require_secret
from gradeflow_shared.webdocs import install_docs

from . import mlflow_io as mio
from . import service
from .config import TrainerSettings, get_settings
from .jobs import JobRunner, Progress, TrainFn

logger = logging.getLogger(__name__)


def _bootstrap(settings: TrainerSettings, runner: JobRunner, stop: threading.Event) -> None:
    """Start a first training when the registry has no champion (TRAIN_ON_START)."""
    try:
        mio.wait_for_server(settings)
        if stop.is_set():
            return
        mio.configure(settings)
        champ = mio.champion_version(mio.client(settings), settings.model_name)
    except GradeflowError as exc:
        logger.error("start-up check of the champion failed: %s", exc.message)
        return
    if champ is None:
        job, _ = runner.submit(RetrainRequest(reason="start-up: no champion in the registry"))
        logger.info("no champion for %s: first training job %s", settings.model_name, job.id)
    else:
        logger.info("champion of %s is version %d", settings.model_name, champ)


def runner_dep(request: Request) -> JobRunner:
    return request.app.state.runner  # type: ignore[no-any-return]


def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """401 unless ``Authorization: Bearer <ADMIN_TOKEN>`` (constant-time comparison)."""
    if not bearer_matches(authorization, request.app.state.settings.admin_token):
        raise Unauthorized("missing or wrong bearer token")


Runner = Annotated[JobRunner, Depends(runner_dep)]
Admin = Depends(require_admin)


def create_app(settings: TrainerSettings | None = None, train_fn: TrainFn | None = None) -> FastAPI:
    """The app; ``train_fn`` replaces the real training (tests)."""
    settings = settings or get_settings()
    require_secret("ADMIN_TOKEN", settings.admin_token)

    def real_train(request: RetrainRequest, progress: Progress) -> TrainResult:
        return service.train_once(settings, request, progress)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner = JobRunner(train_fn or real_train, state_file=settings.service_dir("trainer") / "jobs.json")
        runner.start()
        app.state.runner = runner
        stop = threading.Event()
        if settings.train_on_start:
            threading.Thread(
                target=_bootstrap, args=(settings, runner, stop), name="trainer-bootstrap", daemon=True
            ).start()
        try:
            yield
        finally:
            stop.set()
            runner.stop()

    app = FastAPI(
        title="GradeFlow trainer",
        version="0.1.0",
        description="Trains, evaluates, registers (MLflow), gates, promotes and exports the student-grade model.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    install_docs(app)

    @app.get("/health")
    def health(runner: Runner) -> dict[str, Any]:
        active = runner.active()
        return {
            "status": "ok",
            "service": "trainer",
            "model_name": settings.model_name,
            "mlflow_tracking_uri": settings.mlflow_tracking_uri,
            "active_job": active.id if active else None,
        }

    @app.post("/retrain", response_model=Job, status_code=202, dependencies=[Admin])
    def retrain(runner: Runner, response: Response, body: RetrainRequest | None = None) -> Job:
        job, created = runner.submit(body or RetrainRequest())
        if not created:
            response.status_code = 200
        return job

    @app.get("/jobs", response_model=list[Job])
    def jobs(runner: Runner) -> list[Job]:
        return runner.list()

    @app.get("/jobs/{job_id}", response_model=Job)
    def job(job_id: str, runner: Runner) -> Job:
        found = runner.get(job_id)
        if found is None:
            raise NotFound(f"no job '{job_id}'", details={"job_id": job_id})
        return found

    @app.post("/promote", dependencies=[Admin])
    async def promote(body: PromoteRequest) -> dict[str, Any]:
        return await run_in_threadpool(service.promote, settings, body.version, body.reason)

    @app.post("/rollback", dependencies=[Admin])
    async def rollback(body: RollbackRequest | None = None) -> dict[str, Any]:
        reason = body.reason if body else RollbackRequest().reason
        return await run_in_threadpool(service.rollback, settings, reason)

    @app.get("/history", response_model=list[PromotionEvent])
    def history() -> list[PromotionEvent]:
        return service.history(settings).events(settings.model_name)

    @app.get("/model")
    def model() -> dict[str, Any]:
        return service.champion_info(settings)

    return app
