"""The monitor's HTTP API; the store, the Monitor and the APScheduler job live in the lifespan."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from gradeflow_shared.contracts import DriftVerdict
from gradeflow_shared.errors import Conflict, ErrorBody, NotFound, install_error_handlers
from gradeflow_shared.webdocs import install_docs

from .config import MonitorSettings, get_settings
from .pages import INDEX_CSP, REPORT_CSP, index_page, page_headers
from .rollout_pages import list_rollouts, read_timeline, rollout_page, rollouts_index
from .service import Monitor, Trainer, WindowSource
from .storage import Store

logger = logging.getLogger(__name__)

JOB_ID = "drift-check"
ROLLOUT_JOB_ID = "rollout-check"


def get_monitor(request: Request) -> Monitor:
    return request.app.state.monitor  # type: ignore[no-any-return]


MonitorDep = Annotated[Monitor, Depends(get_monitor)]
# run ids are SQL integers: anything outside 1 .. 2^63-1 is a 422, never a database overflow
RunId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="Run id (GET /reports lists them).")]


class Accepted(BaseModel):
    accepted: bool


def _error(description: str) -> dict[str, Any]:
    # the schema is given as JSON content explicitly: with ``model``, FastAPI would list it under the
    # route's own media type (text/html for the HTML pages)
    return {
        "description": description,
        "content": {"application/json": {"schema": ErrorBody.model_json_schema()}},
    }


Responses = dict[int | str, dict[str, Any]]
INVALID: Responses = {422: _error("Invalid parameter (names the field and the rule)")}
NO_REPORT: Responses = {404: _error("No such run, or its report was pruned"), **INVALID}
HTML_PAGE = {"content": {"text/html": {"schema": {"type": "string"}}}}


def _rollouts_dir(request: Request) -> Path:
    path: Path = request.app.state.settings.service_dir("monitor") / "rollouts"
    return path


def create_app(
    settings: MonitorSettings | None = None,
    window: WindowSource | None = None,
    trainer: Trainer | None = None,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """The app; ``window``/``trainer``/``clock`` replace the HTTP pieces in tests."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from apscheduler.schedulers.background import BackgroundScheduler

        s = settings or get_settings()
        store = Store(s.db_url())
        monitor = Monitor(s, store, window=window, trainer=trainer, clock=clock)
        scheduler = BackgroundScheduler(timezone="UTC")
        if s.scheduler_enabled:
            # max_instances=1 + coalesce: a slow check never piles up runs; the Monitor's lock also
            # keeps POST /checks and the job from overlapping.
            scheduler.add_job(
                monitor.scheduled_check,
                "interval",
                seconds=s.check_interval_seconds,
                id=JOB_ID,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
            if monitor.rollout is not None:
                scheduler.add_job(
                    monitor.rollout.check,
                    "interval",
                    seconds=s.rollout_interval_seconds,
                    id=ROLLOUT_JOB_ID,
                    max_instances=1,
                    coalesce=True,
                    misfire_grace_time=None,
                )
            scheduler.start()
            logger.info("scheduled drift check every %.0fs", s.check_interval_seconds)
        app.state.settings, app.state.store, app.state.monitor, app.state.scheduler = (
            s,
            store,
            monitor,
            scheduler,
        )
        try:
            yield
        finally:
            if scheduler.running:
                scheduler.shutdown(wait=True)
            monitor.close()
            store.close()

    app = FastAPI(title="GradeFlow monitor", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    install_docs(app)

    @app.get("/health")
    def health(request: Request) -> dict[str, Any]:
        monitor: Monitor = request.app.state.monitor
        sched = request.app.state.scheduler
        job = sched.get_job(JOB_ID) if sched.running else None
        return {
            "status": "ok",
            "service": "monitor",
            "check_running": monitor.busy,
            "scheduler": bool(sched.running),
            "next_check": job.next_run_time.isoformat() if job and job.next_run_time else None,
            "runs": monitor.store.count(),
        }

    @app.post(
        "/checks",
        response_model=DriftVerdict,
        responses={
            202: {"model": Accepted, "description": "wait=false: the check runs in the background"},
            409: _error("A check is already running"),
            **INVALID,
        },
    )
    def run_check(
        monitor: MonitorDep,
        wait: Annotated[bool, Query(description="false: answer 202 and check in the background")] = True,
    ) -> Any:
        """Run one check now. 200 with the verdict (wait=true), 202 (wait=false), 409 if one is running."""
        if wait:
            run = monitor.run_check("api")
            return monitor.verdict(run).model_dump(mode="json")
        if monitor.busy:
            raise Conflict("a check is already running", {"busy": True})
        threading.Thread(target=monitor.scheduled_check, name="check-api", daemon=True).start()
        return JSONResponse({"accepted": True}, status_code=202)

    @app.get("/drift", response_model=DriftVerdict)
    def drift(monitor: MonitorDep) -> DriftVerdict:
        """The latest finished run's verdict, with the guard decision (action + why)."""
        return monitor.verdict()

    @app.get("/reports", response_class=HTMLResponse, responses=INVALID)
    def reports(monitor: MonitorDep, limit: int = Query(200, ge=1, le=2000)) -> HTMLResponse:
        """The runs, newest first, with links to their reports (HTML, no script)."""
        return HTMLResponse(index_page(monitor.store.list_runs(limit)), headers=page_headers(INDEX_CSP))

    @app.get("/reports/rollouts", response_class=HTMLResponse)
    def rollouts(request: Request) -> HTMLResponse:
        """Every rollout the monitor evaluated, newest first (HTML, no script)."""
        return HTMLResponse(
            rollouts_index(list_rollouts(_rollouts_dir(request))), headers=page_headers(INDEX_CSP)
        )

    @app.get(
        "/reports/rollouts/{rollout_id}", response_class=HTMLResponse, responses={200: HTML_PAGE, **NO_REPORT}
    )
    def rollout_report(
        request: Request, rollout_id: str = PathParam(min_length=1, max_length=64)
    ) -> HTMLResponse:
        """Both models' live errors over the rollout's evaluations, with the decision points."""
        items = read_timeline(_rollouts_dir(request), rollout_id)
        if items is None:
            raise NotFound("no such rollout", {"rollout_id": rollout_id[:64]})
        return HTMLResponse(rollout_page(rollout_id, items), headers=page_headers(INDEX_CSP))

    @app.get(
        "/reports/{run_id}.json",
        response_class=FileResponse,
        responses={200: {"content": {"application/json": {}}}, **NO_REPORT},
    )
    def report_json(run_id: RunId, monitor: MonitorDep) -> FileResponse:
        """The run's verdicts and the Evidently snapshot as JSON."""
        run = monitor.store.get(run_id)
        if run is None or not run.report_json or not Path(run.report_json).is_file():
            raise NotFound(f"no JSON report for run {run_id}")
        return FileResponse(run.report_json, media_type="application/json", headers=page_headers())

    @app.get("/reports/{run_id}", response_class=FileResponse, responses={200: HTML_PAGE, **NO_REPORT})
    def report_html(run_id: RunId, monitor: MonitorDep) -> FileResponse:
        """The run's Evidently HTML report (self-contained, works offline)."""
        run = monitor.store.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id}")
        if not run.report_html or not Path(run.report_html).is_file():
            raise NotFound(
                f"run {run_id} has no HTML report (no verdict, or pruned)",
                {"json": f"/reports/{run_id}.json" if run.report_json else None},
            )
        return FileResponse(run.report_html, media_type="text/html", headers=page_headers(REPORT_CSP))

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def metrics(monitor: MonitorDep) -> Response:
        """Prometheus metrics (text exposition format)."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(monitor.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
