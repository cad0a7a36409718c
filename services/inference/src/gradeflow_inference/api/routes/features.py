"""The feature store from inference's side: POST /readings (new readings), POST /features/materialize.

Both need the admin token. Readings are checked (``online.ingest``), committed to the journal and
answered; the materializer pushes them into the store's history and online store moments later
(``inference_feature_ingest_lag_seconds`` on /metrics is how long the oldest one has waited).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from gradeflow_shared.errors import GradeflowError

from ...online.ingest import ReadingsRequest, parse_readings
from ...openapi import error_responses, json_body
from ..deps import StateDep, require_admin

router = APIRouter(dependencies=[Depends(require_admin)])


class FeatureStoreNotReady(GradeflowError):
    error_code = "FEATURE_STORE_NOT_READY"
    status_code = 503


class ReadingsAccepted(BaseModel):
    accepted: int = Field(description="Readings committed (all of the request's).")
    pending: int = Field(description="Readings accepted and not yet in the online store, these included.")


class MaterializeQueued(BaseModel):
    queued: bool = Field(
        description="A materialization is queued (it runs after the one in progress, if any)."
    )
    pending: int = Field(description="Accepted readings not yet in the online store (pushed first).")


READINGS_DOC = (
    "New dated feature values of students, e.g. a weekly attendance reading. Each reading: `student_id`, "
    "`event_timestamp` (ISO 8601, UTC without a zone) and at least one feature of the feature store; "
    "values are checked like /predict's (type, hard bounds, string length) and every problem names the "
    "field and the reading's index (422; the whole batch is refused). Accepted readings are committed "
    "before the answer and reach the online store within seconds (features not sent are carried "
    "forward from the student's latest values). 503 until the feature store has been applied."
)


async def readings_body(request: Request, state: StateDep) -> list[dict[str, Any]]:
    """The checked readings of the body (parsed by orjson like /predict's)."""
    layout = state.online.layout()
    if layout is None:
        raise FeatureStoreNotReady(
            f"the feature store at {state.settings.feature_store_path} has not been applied yet "
            "(gradeflow-features apply; make up does it)"
        )
    s = state.settings
    return parse_readings(await request.body(), layout, s.max_batch_records, s.max_string_length)


@router.post(
    "/readings",
    summary="Ingest readings into the feature store (admin token)",
    description=READINGS_DOC,
    response_model=ReadingsAccepted,
    responses=error_responses(401, 409, 413, 415, 422, 503),
    openapi_extra=json_body(ReadingsRequest),
)
def post_readings(
    readings: Annotated[list[dict[str, Any]], Depends(readings_body)], state: StateDep
) -> ReadingsAccepted:
    n = state.journal.add(readings)  # committed: from here on the readings cannot be lost
    state.materializer.request_push()
    state.metrics.readings.inc(n)
    return ReadingsAccepted(accepted=n, pending=state.journal.stats()["pending"])


@router.post(
    "/features/materialize",
    summary="Materialize the history into the online store now (admin token)",
    description="Queues what the schedule (FEATURE_MATERIALIZE_INTERVAL) runs and answers 202 at once (the "
    "first run in a process also loads Feast, several seconds). When it is done: "
    "`inference_feature_materializations_total` and `inference_feature_materialized_timestamp_seconds` on "
    "/metrics (`gradeflow-features materialize` runs it in the foreground instead).",
    status_code=202,
    response_model=MaterializeQueued,
    responses=error_responses(401, 503),
)
def post_materialize(state: StateDep) -> MaterializeQueued:
    if state.online.layout() is None:
        raise FeatureStoreNotReady("the feature store has not been applied yet (gradeflow-features apply)")
    state.materializer.materialize_now()
    return MaterializeQueued(queued=True, pending=state.journal.stats()["pending"])
