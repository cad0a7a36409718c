"""POST /predict: the hot path (no dependency injection, no pydantic per request, not in an included router;
see README "Predict paths")."""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, Request
from fastapi.responses import Response

from gradeflow_shared.contracts import PredictResponse

from ...model import LoadedModel
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
* a batch: `{"records": [record, ...]}` (at most MAX_BATCH_RECORDS records).

The answer names the model version that produced every prediction and one request id per record
(use it for POST /feedback). Validation: a missing field, an unknown field, a wrong type or a value
outside the manifest's bounds -> 422 naming the field, the rule and (batches) the record index.
Categories not seen in training are accepted and predicted through the encoder's unknown handling
(counted in `inference_unseen_categories_total`). `null` is accepted for nullable features (imputed).
503 while no model export is loaded (and, with LOG_DURABLE_ACK, when the prediction log cannot commit the
row). The body must be `Content-Type: application/json` (else 415) and at most MAX_BODY_BYTES long
(else 413); a categorical value at most MAX_STRING_LENGTH characters.
"""


def run_predict(model: LoadedModel, records: list[object], batch: bool) -> tuple[Batch, list[float]]:
    b = model.validator.validate(records, batch)
    return b, model.predict(b)


async def predict(request: Request) -> Response:
    t0 = time.perf_counter()
    state: ServiceState = request.app.state.svc
    model = state.manager.current  # one read of the reference: this request uses this model throughout
    if model is None:
        raise state.no_model()
    body = await request.body()
    records, batch = parse_body(body, model.validator.names, state.max_records)
    if len(records) <= INLINE_MAX_RECORDS:
        b, preds = run_predict(model, records, batch)
    else:
        loop = asyncio.get_running_loop()
        b, preds = await loop.run_in_executor(state.executor, run_predict, model, records, batch)
    version = model.manifest.version
    key = new_batch_key()
    arms: str | None = None
    cand_version: int | None = None
    view = state.rollout.view  # one read: a rollout in force (candidate next to the champion), or None
    if view is not None:
        champion_ms = (time.perf_counter() - t0) * 1000.0
        preds, arms, cand_version = state.rollout.route(
            view, records, preds, key, request.headers.get(KEY_HEADER), champion_ms
        )
    latency_ms = (time.perf_counter() - t0) * 1000.0
    if state.log_enabled:
        # one log entry per request: the validated records (re-encoded by the writer thread, so nothing
        # the validator did not see is stored) and the predictions
        entry = LogBatch(key, time.time(), version, records, preds, latency_ms, b.n, arms, cand_version)
        if state.durable_ack:
            await state.log.acked(entry)  # answer only once the row is committed (LOG_DURABLE_ACK)
        else:
            state.log.submit(entry)
    m = state.metrics
    m.predictions.labels(str(version)).inc(b.n)
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
        responses=error_responses(413, 415, 422, 503),
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}},
    )
