"""Records that name a student: the stored features filled in, the request's own values on top.

A record ``{"student_id": "s1"}`` (optionally with some features: they override the stored ones) becomes
a full record of the serving model's features before the usual validation, so a stored value goes through
the same manifest schema as a sent one and the prediction log keeps the values actually used.

Rules (all or nothing for a batch, like validation):

* ``student_id`` must be a non-empty string of at most MAX_ID_LENGTH characters (else 422 naming it);
* a student the online store does not know -> 404 ``UNKNOWN_STUDENT`` naming the id(s);
* a feature neither sent nor stored -> 422 rule ``feature_missing``; a stored value older than its
  view's time to live (and not sent) -> 422 rule ``feature_expired``; both name the feature and student.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gradeflow_shared.errors import MAX_PROBLEMS, InvalidInput, NotFound

from .reader import OnlineFeatures, StudentRow

ID_FIELD = "student_id"
MAX_ID_LENGTH = 128


class UnknownStudent(NotFound):
    error_code = "UNKNOWN_STUDENT"


def _echo(v: str) -> str:
    return v if len(v) <= 64 else v[:64] + "..."


def _id_problem(v: Any) -> str | None:
    if not isinstance(v, str):
        return "must be a string"
    if not v:
        return "must not be empty"
    if len(v) > MAX_ID_LENGTH:
        return f"at most {MAX_ID_LENGTH} characters, got {len(v)}"
    return None


def _where(batch: bool, i: int) -> str:
    return f"records[{i}]." if batch else ""


def resolve(
    records: list[Any], batch: bool, online: OnlineFeatures | None, features: tuple[str, ...]
) -> list[Any]:
    """``records`` with every by-id record replaced by its full feature record (others unchanged)."""
    idx = [i for i, r in enumerate(records) if type(r) is dict and ID_FIELD in r]
    if not idx:
        return records
    bad = [(i, p) for i in idx if (p := _id_problem(records[i][ID_FIELD])) is not None][:MAX_PROBLEMS]
    if bad:
        details = [
            {"field": ID_FIELD, "rule": "type", "message": p, **({"index": i} if batch else {})}
            for i, p in bad
        ]
        raise InvalidInput(
            "; ".join(f"{_where(batch, i)}{ID_FIELD}: {p}" for i, p in bad[:5]), details=details
        )
    ids = [records[i][ID_FIELD] for i in idx]
    rows = online.lookup(ids, features) if online is not None else [None] * len(ids)
    unknown = [(i, sid) for i, sid, row in zip(idx, ids, rows, strict=True) if row is None]
    if unknown:
        shown = ", ".join(repr(_echo(s)) for _, s in unknown[:5])
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise UnknownStudent(
            f"unknown {ID_FIELD} {shown}{more}: the feature store holds no features for "
            f"{'it' if len(unknown) == 1 else 'them'}",
            details=[
                {"field": ID_FIELD, "rule": "unknown", "value": _echo(s), **({"index": i} if batch else {})}
                for i, s in unknown[:MAX_PROBLEMS]
            ],
        )
    out = list(records)
    problems: list[dict[str, Any]] = []
    for i, sid, row in zip(idx, ids, rows, strict=True):
        rec = records[i]
        if type(row) is tuple:  # every feature stored and fresh (the common case): no loop per feature
            merged = dict(zip(features, row, strict=True))
            if len(rec) > 1:  # sent values override stored ones; other keys kept for validation to name
                for k, v in rec.items():
                    if k != ID_FIELD:
                        merged[k] = v
            out[i] = merged
            continue
        assert isinstance(row, StudentRow)
        stored, expired = row.values, row.expired
        merged = {}
        for f in features:
            if f in rec:
                merged[f] = rec[f]
            elif f in stored:
                merged[f] = stored[f]
            else:
                if f in expired:
                    when = datetime.fromtimestamp(expired[f], UTC).isoformat(timespec="seconds")
                    rule, msg = "feature_expired", f"stored value of {when} is older than its time to live"
                else:
                    rule, msg = "feature_missing", "not in the feature store and not sent"
                problems.append(
                    {
                        "field": f,
                        "rule": rule,
                        "message": f"student {_echo(sid)!r}: {msg}",
                        **({"index": i} if batch else {}),
                    }
                )
        for k, v in rec.items():  # keys that are not features: kept, so validation names them
            if k != ID_FIELD and k not in merged:
                merged[k] = v
        out[i] = merged
    if problems:
        summary = "; ".join(
            f"{_where(batch, p.get('index', 0))}{p['field']}: {p['message']}" for p in problems[:5]
        )
        if len(problems) > 5:
            summary += f"; ... ({len(problems)} problems)"
        raise InvalidInput(summary, details=problems[:MAX_PROBLEMS])
    return out
