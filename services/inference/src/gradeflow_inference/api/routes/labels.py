"""Ground truth and the prediction log: POST /feedback, GET /predictions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from gradeflow_shared.contracts import FeedbackRequest, FeedbackResponse, PredictionPage

from ..deps import StateDep

router = APIRouter()


@router.post("/feedback", response_model=FeedbackResponse, summary="Store true outcomes for request ids")
def post_feedback(body: FeedbackRequest, state: StateDep) -> FeedbackResponse:
    return state.log.flushed_store().add_feedback(body.items)


@router.get("/predictions", response_model=PredictionPage, summary="Page through logged predictions")
def get_predictions(
    state: StateDep,
    since_id: Annotated[int | None, Query(ge=0, description="Only rows with id > since_id")] = None,
    since: Annotated[datetime | None, Query(description="Only rows logged at or after this time")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    labelled: Annotated[bool | None, Query(description="true: with feedback only; false: without")] = None,
) -> PredictionPage:
    return state.log.flushed_store().page(since_id, since, limit, labelled)
