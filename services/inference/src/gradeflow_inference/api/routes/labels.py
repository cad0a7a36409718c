"""Ground truth and the prediction log: POST /feedback (labels: a privileged role), GET /predictions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator, ValidationError

from gradeflow_shared.contracts import FeedbackRequest, FeedbackResponse, PredictionPage
from gradeflow_shared.errors import Unauthorized
from gradeflow_shared.settings import bearer_matches

from ...checks import check_feedback, iso_datetime_only, naive_utc
from ...openapi import error_responses, json_body
from ...schema import load_json
from ..deps import StateDep

router = APIRouter()

MAX_SINCE_ID = 2**63 - 1  # ids are 64-bit signed integers in the database

_bearer = HTTPBearer(auto_error=False, description="LABELLER_TOKEN (or ADMIN_TOKEN)")


def require_labeller(
    request: Request,
    state: StateDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """401 unless ``Authorization: Bearer <LABELLER_TOKEN or ADMIN_TOKEN>`` (constant-time comparison)."""
    s = state.settings
    if not bearer_matches(request.headers.get("authorization"), s.labeller_token, s.admin_token):
        raise Unauthorized("POST /feedback needs Authorization: Bearer <LABELLER_TOKEN or ADMIN_TOKEN>")


async def feedback_body(request: Request) -> FeedbackRequest:
    """The body parsed by orjson like /predict's (FastAPI's parser answers 400 for deep nesting or bad UTF-8)."""
    data = load_json(await request.body())
    try:
        return FeedbackRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    summary="Store true outcomes for request ids (labeller or admin token)",
    description="One label per prediction: a second one is refused with 409 unless `overwrite` is true "
    "(the earlier value is kept in an audit trail). Request ids with no logged prediction are listed in "
    "`unknown_request_ids` and not stored. A label must be a finite JSON number inside the serving "
    "model's target bounds.",
    dependencies=[Depends(require_labeller)],
    responses=error_responses(401, 409, 413, 415, 422, 503),
    openapi_extra=json_body(FeedbackRequest),
)
def post_feedback(
    body: Annotated[FeedbackRequest, Depends(feedback_body)], state: StateDep
) -> FeedbackResponse:
    model = state.manager.current
    check_feedback(body, model.manifest if model is not None else None)
    return state.log.flushed_store().add_feedback(
        body.items, overwrite=body.overwrite, observe=state.metrics.observe_errors
    )


@router.get(
    "/predictions",
    response_model=PredictionPage,
    summary="Page through logged predictions",
    responses=error_responses(422, 503),
)
def get_predictions(
    state: StateDep,
    since_id: Annotated[
        int | None, Query(ge=0, le=MAX_SINCE_ID, description="Only rows with id > since_id")
    ] = None,
    since: Annotated[
        datetime | None,
        BeforeValidator(iso_datetime_only),
        Query(description="Only rows logged at or after this time (ISO 8601; without a zone: UTC)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    labelled: Annotated[bool | None, Query(description="true: with feedback only; false: without")] = None,
) -> PredictionPage:
    return state.log.flushed_store().page(since_id, naive_utc(since), limit, labelled)
