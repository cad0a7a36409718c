"""Checks of POST /feedback and GET /predictions beyond the types of their models (plain functions)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from gradeflow_shared.contracts import FeedbackRequest
from gradeflow_shared.errors import MAX_PROBLEMS, Conflict, InvalidInput
from gradeflow_shared.manifest import Manifest

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def check_feedback(req: FeedbackRequest, manifest: Manifest | None) -> None:
    """InvalidInput (422) naming ``items[i].actual`` for a label outside the serving model's declared target
    bounds (manifest ``target_min``/``target_max``); Conflict (409) naming ``items[i].request_id`` for a
    request id sent twice in one request (two labels for one prediction, as with an earlier label)."""
    lo = manifest.target_min if manifest is not None else None
    hi = manifest.target_max if manifest is not None else None
    target = manifest.target if manifest is not None else "target"
    errors: list[dict[str, Any]] = []
    conflicts: list[dict[str, Any]] = []
    first: dict[str, int] = {}
    for i, item in enumerate(req.items):
        j = first.setdefault(item.request_id, i)
        if j != i:
            conflicts.append(
                {
                    "field": f"items[{i}].request_id",
                    "rule": "duplicate",
                    "message": f"same request id as items[{j}]",
                }
            )
        if lo is not None and item.actual < lo:
            errors.append(
                {
                    "field": f"items[{i}].actual",
                    "rule": "greater_than_equal",
                    "message": f"{target} must be >= {lo:g}, got {item.actual:g}",
                }
            )
        elif hi is not None and item.actual > hi:
            errors.append(
                {
                    "field": f"items[{i}].actual",
                    "rule": "less_than_equal",
                    "message": f"{target} must be <= {hi:g}, got {item.actual:g}",
                }
            )
        if len(errors) + len(conflicts) >= MAX_PROBLEMS:
            break
    if errors:
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        raise InvalidInput(summary, details=errors)
    if conflicts:
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in conflicts[:5])
        raise Conflict(f"two labels for one prediction in one request: {summary}", details=conflicts)


def naive_utc(since: datetime | None) -> datetime | None:
    """``since`` as naive UTC (a naive value is UTC already); InvalidInput when it has no UTC equivalent
    (e.g. 0001-01-01 with a positive offset)."""
    if since is None or since.tzinfo is None:
        return since
    try:
        return since.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        raise InvalidInput(
            f"since: {since.isoformat()} is outside the range of dates in UTC",
            details=[
                {"field": "since", "rule": "datetime_range", "message": "outside the range of dates in UTC"}
            ],
        ) from None


def iso_datetime_only(value: Any) -> Any:
    """Refuse a bare number where an ISO 8601 date-time is expected (pydantic would read it as a Unix time)."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and _NUMBER.fullmatch(value.strip())):
        raise ValueError("expected an ISO 8601 date-time such as 2026-12-01T08:00:00Z, not a number")
    return value
