"""The trainer's HTTP routes: thin wrappers over ``service`` and ``jobs``, documented for OpenAPI.

Admin routes (``POST /retrain``, ``/promote``, ``/rollback``) need ``Authorization: Bearer
<ADMIN_TOKEN>`` (the ``AdminToken`` security scheme: Swagger UI's Authorize button); without it,
or with a wrong one, they answer 401 with the platform's error body and do nothing. Every input
is bounded by its model, so a hostile value is a 422, never a 5xx.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from gradeflow_shared.contracts import Job, PromoteRequest, PromotionEvent, RetrainRequest, RollbackRequest
from gradeflow_shared.errors import ErrorBody, InvalidInput, NotFound, Unauthorized
from gradeflow_shared.settings import bearer_matches

from . import rollout, service
from .config import TrainerSettings
from .jobs import JobRunner
from .registry import Registry

# ------------------------------------------------------------------ response models


class Health(BaseModel):
    status: str
    service: str
    model_name: str
    mlflow_tracking_uri: str
    active_job: str | None = Field(description="The queued or running job, if any.")


class PromotionResult(BaseModel):
    model_name: str
    version: int = Field(description="The new champion.")
    previous_version: int | None = Field(description="The champion before this change.")
    action: str = Field(description="promote or rollback.")
    export_dir: str = Field(description="The export MODEL_DIR/current now points at.")
    event: PromotionEvent
    rollout: dict[str, Any] | None = Field(
        default=None,
        description="The rollout this change ended (it was in progress): its decision and reason; "
        "None when no rollout was in progress.",
    )


class ModelInfo(BaseModel):
    model_name: str
    alias: str
    version: int | None = Field(description="The version holding the champion alias (None: no champion).")
    run_id: str | None
    mlflow_run_url: str | None
    tags: dict[str, str] = Field(default_factory=dict, description="The champion version's tags.")
    export: dict[str, Any] | None = Field(description="The export inference serves (MODEL_DIR/current).")


_WHY = {
    401: "Missing or wrong `Authorization: Bearer <ADMIN_TOKEN>`; nothing was done.",
    404: "No such item.",
    409: "Not possible in the current state.",
    422: "An input is invalid; the message names the field and the rule.",
    500: "The export of the model failed its checks; the previous export keeps serving.",
    502: "The MLflow server could not be reached or answered an error.",
    503: "The MLflow server is down right now (the message names its URL): nothing was started or "
    "joined; retry later.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, all with the one error body."""
    return {code: {"model": ErrorBody, "description": _WHY[code]} for code in codes}


# ------------------------------------------------------------------ dependencies
bearer = HTTPBearer(
    auto_error=False, scheme_name="AdminToken", description="The ADMIN_TOKEN of the platform."
)


def settings_dep(request: Request) -> TrainerSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


def runner_dep(request: Request) -> JobRunner:
    return request.app.state.runner  # type: ignore[no-any-return]


def registry_dep(request: Request) -> Registry:
    """The registry given to ``create_app`` (tests), else the MLflow server's."""
    return request.app.state.registry or service.mlflow_registry(request.app.state.settings)


def require_registry_up(request: Request) -> None:
    """503 (ServiceUnavailable) while the registry the training writes to is down, so a trigger is
    refused instead of starting or joining a job that would fail (skipped for an injected
    ``train_fn``: that training needs no registry)."""
    if request.app.state.own_training:
        registry_dep(request).check_available()


def require_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """401 unless ``Authorization: Bearer <ADMIN_TOKEN>`` (constant-time comparison)."""
    given = f"Bearer {credentials.credentials}" if credentials else None
    if not bearer_matches(given, request.app.state.settings.admin_token):
        raise Unauthorized("missing or wrong bearer token")


Settings = Annotated[TrainerSettings, Depends(settings_dep)]
Runner = Annotated[JobRunner, Depends(runner_dep)]
RegistryDep = Annotated[Registry, Depends(registry_dep)]
Admin = [Depends(require_admin)]
JobId = Annotated[str, Path(min_length=1, max_length=64, description="The job's id (from POST /retrain).")]

router = APIRouter()


@router.get(
    "/health",
    summary="Liveness and the active job",
    description="Answers while the service runs; names the registered model and the job in flight.",
    response_model=Health,
)
def health(settings: Settings, runner: Runner) -> Health:
    active = runner.active()
    return Health(
        status="ok",
        service="trainer",
        model_name=settings.model_name,
        mlflow_tracking_uri=settings.mlflow_tracking_uri,
        active_job=active.id if active else None,
    )


@router.post(
    "/retrain",
    summary="Start a training job (admin)",
    description="Queues a training on the base data plus the labelled production rows; the gate decides "
    "the promotion. While a job is queued or running, a new trigger is coalesced into it (200, that job) "
    "instead of queueing another. While the MLflow server does not answer (a probe of a few seconds, "
    "cached briefly), the trigger is refused with 503 and no job is started or joined.",
    response_model=Job,
    status_code=202,
    dependencies=[*Admin, Depends(require_registry_up)],
    responses={
        200: {"model": Job, "description": "Coalesced: the job already in flight."},
        **errors(401, 422, 503),
    },
)
def retrain(runner: Runner, response: Response, body: RetrainRequest | None = None) -> Job:
    job, created = runner.submit(body or RetrainRequest())
    if not created:
        response.status_code = 200
    return job


@router.get(
    "/jobs",
    summary="Every kept job, newest first",
    description="The training jobs this trainer ran or runs (the last 200 are kept across restarts).",
    response_model=list[Job],
)
def jobs(runner: Runner) -> list[Job]:
    return runner.list()


@router.get(
    "/jobs/{job_id}",
    summary="One job: state, progress, result or error",
    description="Poll it after POST /retrain; `result` holds the gate's decision once it succeeded.",
    response_model=Job,
    responses=errors(404, 422),
)
def job(job_id: JobId, runner: Runner) -> Job:
    found = runner.get(job_id)
    if found is None:
        raise NotFound(f"no job '{job_id}'", details={"job_id": job_id})
    return found


@router.post(
    "/promote",
    summary="Make a version the champion (admin)",
    description="Exports the version (its kept export, else rebuilt from MLflow), moves the champion alias "
    "and records the promotion; inference reloads by itself. A rollout in progress ends first: promoting its "
    "candidate finishes it as promoted; promoting any other version aborts it (superseded by the manual "
    "promote, candidate withdrawn). The ended rollout is in the answer's `rollout`.",
    response_model=PromotionResult,
    dependencies=Admin,
    responses=errors(401, 404, 422, 500, 502),
)
async def promote(body: PromoteRequest, settings: Settings, registry: RegistryDep) -> dict[str, Any]:
    return await run_in_threadpool(service.promote, settings, body.version, body.reason, registry=registry)


@router.post(
    "/rollback",
    summary="Return to the previous champion (admin)",
    description="Undoes the last promotion (following the promotion history, rollbacks included). A rollout "
    "in progress is aborted first (candidate withdrawn; the answer's `rollout` shows it); to stop only the "
    "rollout and keep the champion, use POST /rollout/abort.",
    response_model=PromotionResult,
    dependencies=Admin,
    responses=errors(401, 409, 422, 500, 502),
)
async def rollback(
    settings: Settings, registry: RegistryDep, body: RollbackRequest | None = None
) -> dict[str, Any]:
    reason = body.reason if body else RollbackRequest().reason
    return await run_in_threadpool(service.rollback, settings, reason, registry=registry)


@router.get(
    "/history",
    summary="Promotion history, oldest first",
    description="Every change of the champion: gate promotions, manual promotions and rollbacks.",
    response_model=list[PromotionEvent],
)
def history(settings: Settings) -> list[PromotionEvent]:
    return service.history(settings).events(settings.model_name)


@router.get(
    "/model",
    summary="The champion and the export inference serves",
    description="The version holding the champion alias (with its tags and MLflow run link) and the "
    "manifest summary of MODEL_DIR/current.",
    response_model=ModelInfo,
    responses=errors(502),
)
def model(settings: Settings, registry: RegistryDep) -> dict[str, Any]:
    return service.champion_info(settings, registry=registry)


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    description="Jobs by outcome and their durations, champion changes by action (from the promotion "
    "history), the champion version and the jobs in flight. Never calls MLflow.",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


# ------------------------------------------------------------------ progressive delivery
class RolloutView(BaseModel):
    mode: str = Field(description="ROLLOUT: direct, shadow, canary or shadow+canary.")
    active: bool = Field(description="A rollout is in progress (the candidate serves next to the champion).")
    rollout: dict[str, Any] | None = Field(
        description="The last rollout: stage, versions, shares, the monitor's evidence so far, the decision."
    )


class RolloutReason(BaseModel):
    reason: str = Field(default="manual", min_length=1, max_length=500, description="Why (recorded).")


class RolloutStage(BaseModel):
    stage: Literal["shadow", "canary"] = Field(description="The stage to move the rollout to.")
    reason: str = Field(default="manual stage change", min_length=1, max_length=500)


class RolloutEvidence(BaseModel):
    rollout_id: str = Field(min_length=1, max_length=64, description="The rollout the evidence is about.")
    evidence: dict[str, Any] = Field(description="The monitor's evaluation (kept in GET /rollout).")


class RolloutEnd(RolloutReason):
    decision: Literal["rolled_back", "aborted"] = Field(
        default="aborted",
        description="rolled_back: the sequential test found the challenger worse; aborted: any other reason.",
    )


@router.get(
    "/rollout",
    summary="The rollout in progress (or the last one)",
    description="Stage, champion and candidate versions, shares, the monitor's evidence so far and the decision.",
    response_model=RolloutView,
)
def rollout_view(settings: Settings) -> dict[str, Any]:
    return rollout.describe(settings)


@router.post(
    "/rollout/promote",
    summary="Promote the candidate now (admin)",
    description="The champion alias moves to the candidate, its export becomes current, the slot clears.",
    response_model=RolloutView,
    dependencies=Admin,
    responses=errors(401, 409, 422, 500, 502),
)
async def rollout_promote(
    settings: Settings, registry: RegistryDep, body: RolloutReason | None = None
) -> dict[str, Any]:
    reason = body.reason if body else "manual promotion of the candidate"
    await run_in_threadpool(rollout.promote, settings, registry, reason)
    return rollout.describe(settings)


@router.post(
    "/rollout/abort",
    summary="End the rollout, keep the champion (admin)",
    description="The candidate leaves the volume; the reason goes to the history and the candidate's MLflow "
    "tags. `decision` rolled_back is what the monitor sends when its sequential test finds the challenger worse.",
    response_model=RolloutView,
    dependencies=Admin,
    responses=errors(401, 409, 422, 502),
)
async def rollout_abort(
    settings: Settings, registry: RegistryDep, body: RolloutEnd | None = None
) -> dict[str, Any]:
    b = body or RolloutEnd(reason="manual abort")
    await run_in_threadpool(rollout.end, settings, registry, b.decision, b.reason)
    return rollout.describe(settings)


@router.post(
    "/rollout/stage",
    summary="Move the rollout to another stage (admin)",
    description="shadow or canary; the evidence starts again for the new stage.",
    response_model=RolloutView,
    dependencies=Admin,
    responses=errors(401, 409, 422, 502),
)
async def rollout_stage(body: RolloutStage, settings: Settings, registry: RegistryDep) -> dict[str, Any]:
    await run_in_threadpool(rollout.set_stage, settings, registry, body.stage, body.reason)
    return rollout.describe(settings)


@router.post(
    "/rollout/evidence",
    summary="Record the monitor's evaluation of the rollout (admin)",
    description="The monitor posts its latest evaluation (sequential test, both models' errors, per-arm "
    "stats); GET /rollout shows it as the evidence so far. At most 20000 characters of JSON.",
    response_model=RolloutView,
    dependencies=Admin,
    responses=errors(401, 409, 422),
)
def rollout_evidence(body: RolloutEvidence, settings: Settings) -> dict[str, Any]:
    if len(json.dumps(body.evidence, default=str)) > 20_000:
        raise InvalidInput("evidence: at most 20000 characters of JSON", details=[{"field": "evidence"}])
    rollout.record_evidence(settings, body.rollout_id, body.evidence)
    return rollout.describe(settings)
