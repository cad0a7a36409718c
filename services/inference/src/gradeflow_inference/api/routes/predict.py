"""POST /predict: the hot path (no dependency injection, no pydantic per request, not in an included router;
see README "Predict paths")."""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, Request
from fastapi.responses import Response

from gradeflow_shared.contracts import PredictResponse

from ...metrics import CANDIDATE, CHAMPION, SERVED
from ...model import LoadedModel
from ...online.reader import OnlineFeatures
from ...online.resolve import resolve
from ...openapi import error_responses
from ...predlog.ids import new_batch_key
from ...predlog.store import LogBatch
from ...rollout import KEY_HEADER
from ...schema import Batch, parse_body
from ...state import ServiceState
from ..encode import predict_response

INLINE_MAX_RECORDS = 16  # smaller batches are validated and predicted on the event loop (~0.1 ms)

PREDICT_DOC = """Predict one record or a batch.

* one record: a JSON object with every feature of the serving model (see GET /model for the schema);
* a batch: `{"records": [record, ...]}` (at most MAX_BATCH_RECORDS records);
* by student id: `{"student_id": "s-0001"}` in place of a record, also inside `records`, or a batch of ids
  `{"student_ids": ["s-0001", ...]}`. The student's latest features come from the feature store's online
  store; features sent next to `student_id` override the stored ones. The filled-in record is validated
  like a sent one and logged with the values used. A student the store does not know -> 404 naming the
  id; a feature neither sent nor stored (`feature_missing`) or stored longer ago than its time to live
  (`feature_expired`) -> 422 naming the feature and the student.

The answer names the model version that produced every prediction and one request id per record
(use it for POST /feedback). Validation: a missing field, an unknown field, a wrong type or a value
outside the manifest's bounds -> 422 naming the field, the rule and (batches) the record index.
Categories not seen in training are accepted and predicted through the encoder's unknown handling
(counted in `inference_unseen_categories_total`). `null` is accepted for nullable features (imputed).
503 while no model export is loaded (and, with LOG_DURABLE_ACK, when the prediction log cannot commit the
row). The body must be `Content-Type: application/json` (else 415) and at most MAX_BODY_BYTES long
(else 413); a categorical value at most MAX_STRING_LENGTH characters.
"""


def run_predict(
    model: LoadedModel, records: list[object], batch: bool, online: OnlineFeatures | None
) -> tuple[list[object], Batch, list[float]]:
    """The records as predicted (by-id records filled in from the online store), validated, predicted."""
    records = resolve(records, batch, online, model.validator.feature_names)
    b = model.validator.validate(records, batch)
    return records, b, model.predict(b)


async def predict(request: Request) -> Response:
    t0 = time.perf_counter()
    state: ServiceState = request.app.state.svc
    model = state.manager.current  # one read of the reference: this request uses this model throughout
    if model is None:
        raise state.no_model()
    version = model.manifest.version
    request.scope[SERVED] = (version, CHAMPION)  # the middleware counts this request under this version
    body = await request.body()
    records, batch = parse_body(body, model.validator.names, state.max_records)
    sent = records
    if len(records) <= INLINE_MAX_RECORDS:
        records, b, preds = run_predict(model, records, batch, state.online)
    else:
        loop = asyncio.get_running_loop()
        records, b, preds = await loop.run_in_executor(
            state.executor, run_predict, model, records, batch, state.online
        )
    key = new_batch_key()
    arms: str | None = None
    cand_version: int | None = None
    view = state.rollout.view  # one read: a rollout in force (candidate next to the champion), or None
    if view is not None:
        champion_ms = (time.perf_counter() - t0) * 1000.0
        preds, arms, cand_version = state.rollout.route(
            view, records, preds, key, request.headers.get(KEY_HEADER), champion_ms, sent
        )
    latency_ms = (time.perf_counter() - t0) * 1000.0
    if state.log_enabled:
        # one log entry per request: the validated records (re-encoded by the writer thread, so nothing
        # the validator did not see is stored; by-id records with the stored values used) and the predictions
        entry = LogBatch(key, time.time(), version, records, preds, latency_ms, b.n, arms, cand_version)
        if state.durable_ack:
            await state.log.acked(entry)  # answer only once the row is committed (LOG_DURABLE_ACK)
        else:
            state.log.submit(entry)
    m = state.metrics
    if arms is None:
        m.predicted(version).inc(b.n)
    else:  # canary: count each model's records under its own version and arm
        on_candidate = arms.count("1")
        if on_candidate and cand_version is not None:
            m.predicted(cand_version, CANDIDATE).inc(on_candidate)
            if on_candidate == b.n:
                request.scope[SERVED] = (cand_version, CANDIDATE)
        if b.n - on_candidate:
            m.predicted(version).inc(b.n - on_candidate)
    if b.unseen:
        for feat, cnt in b.unseen.items():
            m.unseen.labels(feat).inc(cnt)
    # request ids = batch key + index (predlog.ids.request_ids), encoded without a loop per record
    if arms is None:
        return Response(predict_response(version, key, preds), media_type="application/json")
    # canary: the candidate answered some records (all of them: its version; else the champion's, mixed)
    answered_by = "candidate" if "0" not in arms else "mixed"
    shown = cand_version if answered_by == "candidate" and cand_version is not None else version
    return Response(
        predict_response(shown, key, preds),
        media_type="application/json",
        headers={"X-Rollout-Arm": answered_by},
    )


def install(app: FastAPI) -> None:
    """Add POST /predict to the app itself, first of its routes.

    Not through an included APIRouter: FastAPI 0.165 matches included routes through a lazy include layer
    that cost about 45 us more per request here (a trivial endpoint: 127 -> 177 us), 10 % of a batch-1
    prediction."""
    app.add_api_route(
        "/predict",
        predict,
        methods=["POST"],
        summary="Predict one record or a batch",
        description=PREDICT_DOC,
        response_model=PredictResponse,
        responses=error_responses(404, 413, 415, 422, 503),
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}},
    )
