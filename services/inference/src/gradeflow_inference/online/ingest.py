"""``POST /readings``: new dated feature values of students, checked before they are accepted.

Body ``{"readings": [{"student_id": "s-0001", "event_timestamp": "2026-10-05T08:00:00Z",
"attendance_pct": 91.5, ...}, ...]}`` (at most MAX_BATCH_RECORDS readings). The same rules and error
shape as ``POST /predict``: every problem names the field, the rule and the reading's index, and the
whole batch is refused (422) when one reading is invalid, so nothing is half accepted.

* ``student_id``: a non-empty string (at most 128 characters);
* ``event_timestamp``: ISO 8601 (without a zone: UTC); more than MAX_FUTURE_SECONDS ahead of the
  server's clock -> 409 ``READING_FROM_THE_FUTURE`` (such a reading would shadow every real one until
  then), checked once the batch is otherwise valid;
* at least one feature; every key a feature of the store (else ``extra_forbidden``), each value checked
  against the store's schema (the dataset's types and hard bounds: the ones the model's manifest has).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, Field

from gradeflow_shared.errors import MAX_PROBLEMS, Conflict, InvalidInput
from gradeflow_shared.manifest import FeatureSpec

from ..schema import RecordValidator, _batch_list, load_json
from .layout import Layout
from .resolve import ID_FIELD, MAX_ID_LENGTH, _id_problem

TS_FIELD = "event_timestamp"
MAX_FUTURE_SECONDS = 86_400  # a reading dated more than a day ahead is a mistake (a clock or a format)


class Reading(BaseModel):
    """One dated reading of some features of a student (any other key is a feature of the store)."""

    model_config = {"extra": "allow"}

    student_id: str = Field(min_length=1, max_length=128, description="The student's id.")
    event_timestamp: str = Field(
        max_length=40, description="When the values were observed (ISO 8601; without a zone: UTC)."
    )


class ReadingsRequest(BaseModel):
    model_config = {"extra": "forbid"}

    readings: list[Reading] = Field(min_length=1, description="At most MAX_BATCH_RECORDS readings.")


@lru_cache(maxsize=4)
def _validator(schema: tuple[tuple[tuple[str, Any], ...], ...], max_string_length: int) -> RecordValidator:
    specs = [FeatureSpec(**dict(d)) for d in schema]
    return RecordValidator(specs, max_string_length)


def validator_for(layout: Layout, max_string_length: int) -> RecordValidator:
    frozen = tuple(
        tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()) for d in layout.schema
    )
    return _validator(frozen, max_string_length)


class ReadingFromTheFuture(Conflict):
    """A reading dated ahead of the server's clock: it would shadow every real reading until then."""

    error_code = "READING_FROM_THE_FUTURE"


def _timestamp(v: Any) -> tuple[datetime | None, str | None]:
    """(the UTC time, None) or (None, the problem)."""
    if not isinstance(v, str):
        return None, "must be an ISO 8601 date-time string"
    if len(v) > 40:
        return None, "at most 40 characters"
    text = v.upper()
    try:
        ts = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return None, f"not an ISO 8601 date-time: {v!r}"
    return (ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)), None


def reading_schema(layout: Layout, max_string_length: int) -> dict[str, Any]:
    """JSON schema of one reading for the OpenAPI document: the store's features (types, bounds), the id
    and the time; at least one feature."""
    record = validator_for(layout, max_string_length).json_schema([FeatureSpec(**d) for d in layout.schema])
    props = {
        ID_FIELD: {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID_LENGTH,
            "description": "The student's id.",
        },
        TS_FIELD: {
            "type": "string",
            "format": "date-time",
            "maxLength": 40,
            "description": "When the values were observed (ISO 8601; without a zone: UTC). More than a day "
            "ahead of the server's clock: 409.",
        },
        **record["properties"],
    }
    return {
        "type": "object",
        "properties": props,
        "required": [ID_FIELD, TS_FIELD],
        "minProperties": 3,
        "additionalProperties": False,
    }


def parse_readings(
    body: bytes, layout: Layout, max_records: int, max_string_length: int
) -> list[dict[str, Any]]:
    """The readings of a body, checked (InvalidInput naming every problem otherwise)."""
    data = load_json(body)
    if not isinstance(data, dict) or "readings" not in data:
        raise InvalidInput(
            'body must be {"readings": [...]}',
            details=[{"field": "readings", "rule": "missing", "message": "field required"}],
        )
    items = _batch_list(data, "readings", max_records)
    now = datetime.now(UTC)
    errors: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    features: list[Any] = []
    future: list[int] = []
    for i, r in enumerate(items):
        if not isinstance(r, dict):
            errors.append(
                {"index": i, "field": "", "rule": "type", "message": "reading must be a JSON object"}
            )
            features.append({})
            continue
        sid = r.get(ID_FIELD)
        problem = "field required" if ID_FIELD not in r else _id_problem(sid)
        if problem:
            errors.append(
                {
                    "index": i,
                    "field": ID_FIELD,
                    "rule": "missing" if ID_FIELD not in r else "type",
                    "message": problem,
                }
            )
        ts, ts_problem = _timestamp(r[TS_FIELD]) if TS_FIELD in r else (None, "field required")
        if ts_problem:
            errors.append({"index": i, "field": TS_FIELD, "rule": "datetime", "message": ts_problem})
        elif ts is not None and (ts - now).total_seconds() > MAX_FUTURE_SECONDS:
            future.append(i)
        feats = {k: v for k, v in r.items() if k not in (ID_FIELD, TS_FIELD)}
        if not feats:
            errors.append({"index": i, "field": "", "rule": "too_short", "message": "at least one feature"})
        features.append(feats)
        out.append({ID_FIELD: sid, TS_FIELD: ts.isoformat() if ts else None, **feats})
    try:
        validator_for(layout, max_string_length).validate(features, batch=True, partial=True)
    except InvalidInput as exc:
        errors.extend(exc.details or [])
    if errors:
        errors.sort(key=lambda e: e.get("index", 0))
        errors = errors[:MAX_PROBLEMS]
        summary = "; ".join(
            f"readings[{e.get('index', 0)}].{e['field'] or '<reading>'}: {e['message']}" for e in errors[:5]
        )
        if len(errors) > 5:
            summary += f"; ... ({len(errors)} problems)"
        raise InvalidInput(summary, details=errors)
    if future:
        raise ReadingFromTheFuture(
            f"readings[{future[0]}].{TS_FIELD}: more than {MAX_FUTURE_SECONDS // 3600} hours ahead of the "
            "server's clock",
            details=[
                {"index": i, "field": TS_FIELD, "rule": "future", "message": "ahead of the server's clock"}
                for i in future[:MAX_PROBLEMS]
            ],
        )
    return out
