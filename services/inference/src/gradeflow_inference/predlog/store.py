"""The prediction log's SQL: batch inserts, pages of records, feedback (SQLite and PostgreSQL dialects).

Rows are ``prediction_batches`` (one per request) and ``feedback`` (one per request id); see ``ids`` for
how record ids and request ids are derived. The store is used by the writer thread (``write``) and by the
request threads (``page``, ``add_feedback``); it opens its engine and runs the migrations in ``open``.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from gradeflow_shared.contracts import FeedbackItem, FeedbackResponse, LoggedPrediction, PredictionPage
from gradeflow_shared.errors import MAX_PROBLEMS, Conflict, GradeflowError

from .ids import ID_STRIDE, record_request_id, split_request_id

if TYPE_CHECKING:
    import sqlalchemy as sa

logger = logging.getLogger(__name__)


class LogBatch(NamedTuple):
    """One logged request, as the request path queues it."""

    batch_key: str
    ts: float  # unix time
    model_version: int
    records: list[Any]  # the validated records (parsed JSON objects), encoded by the writer thread
    predictions: Sequence[float]  # n values
    latency_ms: float
    n: int
    arms: str | None = None  # rollout canary: per record '0' champion / '1' candidate (None: all champion)
    candidate_version: int | None = None
    replay: bool = False  # from a dead process's journal (predlog.journal): the database may have it already


class ShadowRow(NamedTuple):
    """The challenger's predictions of one shadowed request (``shadow_predictions``)."""

    batch_key: str
    ts: float
    model_version: int
    predictions: Sequence[float | None]


ErrorObserver = Callable[[int, list[float]], None]  # (model version, |prediction - label| of each label)


class LogUnavailable(GradeflowError):
    error_code = "LOG_UNAVAILABLE"
    status_code = 503


class AlreadyLabelled(Conflict):
    """A second label for a prediction without ``overwrite`` (409; names the request ids)."""

    def __init__(self, request_ids: list[str]) -> None:
        shown = ", ".join(request_ids[:5]) + (
            f" and {len(request_ids) - 5} more" if len(request_ids) > 5 else ""
        )
        super().__init__(
            f"{len(request_ids)} predictions already have a label ({shown}): nothing was stored; send "
            '"overwrite": true to replace the labels (the earlier values are kept in the audit trail)',
            details={"request_ids": request_ids[:MAX_PROBLEMS], "count": len(request_ids)},
        )


def _records_of(blob: str | bytes) -> list[Any]:
    data = orjson.loads(blob)
    return data["records"] if isinstance(data, dict) else data  # type: ignore[no-any-return]


def _blobs(
    records: str | bytes, predictions: str | bytes, n: int, batch_key: str
) -> tuple[list[Any], list[Any]]:
    """The records and predictions of a stored batch; a damaged one (unparsable, or fewer than ``n`` of
    either) gives empty lists and a warning: its records are left out of a read, never a 500."""
    try:
        recs, preds = _records_of(records), orjson.loads(predictions)
        if isinstance(recs, list) and isinstance(preds, list) and len(recs) >= n and len(preds) >= n:
            return recs, preds
    except (orjson.JSONDecodeError, TypeError, KeyError):
        pass
    logger.warning(
        "prediction log: batch %s is damaged (records or predictions unreadable); skipped", batch_key
    )
    return [], []


def _naive_utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def _sqlite_ts(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


_SQLITE_CHUNK = 100  # rows per statement (10 parameters each; SQLite allows 32766)


@functools.lru_cache(maxsize=8)
def _sqlite_insert(rows: int) -> str:
    return (
        "INSERT INTO prediction_batches (batch_key, first_index, n, ts, model_version, records, predictions, "
        "latency_ms, arms, candidate_version) VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * rows)
    )


def _records_json(b: LogBatch) -> str:
    return orjson.dumps(b.records).decode()


def _predictions_json(b: LogBatch) -> str:
    return orjson.dumps(b.predictions, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _insert_sqlite(cur: sqlite3.Cursor, batch: list[LogBatch]) -> None:
    """Multi-row INSERT statements through the DB-API: far cheaper than Core's per-row parameter
    processing. The timestamp text is the format SQLAlchemy's DateTime reads back."""
    for i in range(0, len(batch), _SQLITE_CHUNK):
        flat: list[Any] = []
        for b in batch[i : i + _SQLITE_CHUNK]:
            flat += (
                b.batch_key,
                0,
                b.n,
                _sqlite_ts(b.ts),
                b.model_version,
                _records_json(b),
                _predictions_json(b),
                b.latency_ms,
                b.arms,
                b.candidate_version,
            )
        cur.execute(_sqlite_insert(len(flat) // 10), flat)


def _shadows(conn: sa.Connection, keys: list[str]) -> dict[str, tuple[int, list[float | None]]]:
    """The shadow predictions of these batches: batch key -> (challenger version, predictions)."""
    import sqlalchemy as sa

    from ..db import shadow_predictions as sp

    out: dict[str, tuple[int, list[float | None]]] = {}
    for i in range(0, len(keys), 500):
        for r in conn.execute(
            sa.select(sp.c.batch_key, sp.c.model_version, sp.c.predictions).where(
                sp.c.batch_key.in_(keys[i : i + 500])
            )
        ):
            try:
                out[r.batch_key] = (r.model_version, orjson.loads(r.predictions))
            except orjson.JSONDecodeError:
                continue  # a damaged shadow row: the record reads without its shadow prediction
    return out


def _rollout_fields(r: Any, pos: int, shadows: dict[str, tuple[int, list[float | None]]]) -> dict[str, Any]:
    """The answering model (arm, version) and the shadow prediction of the record at ``pos`` of row ``r``."""
    cand = r.arms is not None and pos < len(r.arms) and r.arms[pos] == "1"
    out: dict[str, Any] = {
        "model_version": r.candidate_version if cand and r.candidate_version is not None else r.model_version,
        "arm": "candidate" if cand else "champion",
    }
    shadow = shadows.get(r.batch_key)
    if shadow is not None and pos < len(shadow[1]) and shadow[1][pos] is not None:
        out["shadow_version"], out["shadow_prediction"] = shadow[0], shadow[1][pos]
    return out


class LogStore:
    """The database of the prediction log (one engine, opened by ``open``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: sa.Engine | None = None
        self.ready = threading.Event()

    def open(self) -> None:
        """Create the engine and run the migrations (the writer retries this until it works)."""
        from ..db import make_engine, upgrade

        engine = make_engine(self.url)
        try:
            upgrade(engine)
        except Exception:
            engine.dispose()
            raise
        self.engine = engine
        self.ready.set()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    def require(self) -> sa.Engine:
        if self.engine is None:
            raise LogUnavailable(f"prediction log database is not open: {self.safe_url()}")
        return self.engine

    def safe_url(self) -> str:
        try:
            from sqlalchemy.engine import make_url

            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - only for display
            return "<unparseable url>"

    # ------------------------------------------------------------------ writes (writer thread)
    def write(self, batch: list[LogBatch]) -> int:
        """Insert the batches; returns the records dropped because their batch key was already stored (a
        replayed batch the database already has is not counted: it is logged, by the process that died).

        Any other database error propagates (the writer keeps the batch and retries)."""
        import sqlalchemy as sa

        from ..db import prediction_batches

        engine = self.require()
        if engine.dialect.name == "sqlite":
            # multi-row INSERT statements through the DB-API: far cheaper than Core's per-row parameter
            # processing. The timestamp text is the format SQLAlchemy's DateTime reads back.
            try:
                with engine.begin() as conn:
                    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                    _insert_sqlite(cur, batch)
                    cur.close()
                return 0
            except (sa.exc.IntegrityError, sqlite3.IntegrityError):
                pass  # one-by-one below
        values: list[dict[str, Any]] = [
            {
                "batch_key": b.batch_key,
                "first_index": 0,
                "n": b.n,
                "ts": _naive_utc(b.ts),
                "model_version": b.model_version,
                "records": _records_json(b),
                "predictions": _predictions_json(b),
                "latency_ms": b.latency_ms,
                "arms": b.arms,
                "candidate_version": b.candidate_version,
            }
            for b in batch
        ]
        try:
            with engine.begin() as conn:
                conn.execute(prediction_batches.insert(), values)
            return 0
        except sa.exc.IntegrityError:
            pass
        # a duplicate batch key: write the others one by one, count the records of the rest as dropped
        bad = 0
        for b, v in zip(batch, values, strict=True):
            try:
                with engine.begin() as conn:
                    conn.execute(prediction_batches.insert(), [v])
            except sa.exc.IntegrityError:
                if not b.replay:
                    bad += int(v["n"])
        if bad:
            logger.warning("prediction log: %d records with duplicate request ids dropped", bad)
        return bad

    def write_shadow(self, rows: Sequence[ShadowRow]) -> None:
        """Insert shadow predictions (a request shadowed twice keeps its first row)."""
        import sqlalchemy as sa

        from ..db import shadow_predictions

        engine = self.require()
        values = [
            {
                "batch_key": r.batch_key,
                "model_version": r.model_version,
                "predictions": orjson.dumps(list(r.predictions), option=orjson.OPT_SERIALIZE_NUMPY).decode(),
                "ts": _naive_utc(r.ts),
            }
            for r in rows
        ]
        try:
            with engine.begin() as conn:
                conn.execute(shadow_predictions.insert(), values)
        except sa.exc.IntegrityError:
            for v in values:
                try:
                    with engine.begin() as conn:
                        conn.execute(shadow_predictions.insert(), [v])
                except sa.exc.IntegrityError:
                    continue

    def page(
        self, since_id: int | None, since: datetime | None, limit: int, labelled: bool | None
    ) -> PredictionPage:
        """Up to ``limit`` records with id > ``since_id``, logged at or after ``since`` (naive UTC)."""
        engine = self.require()
        with engine.connect() as conn:
            if labelled is True:
                items = self._page_labelled(conn, since_id, since, limit)
            else:
                items = self._page_all(conn, since_id, since, limit, unlabelled_only=labelled is False)
        next_id = items[-1].id if len(items) == limit and items else None
        return PredictionPage(items=items, next_since_id=next_id)

    @staticmethod
    def _page_all(
        conn: sa.Connection, since_id: int | None, since: datetime | None, limit: int, unlabelled_only: bool
    ) -> list[LoggedPrediction]:
        """Records in id order: batch metadata first (no blobs), then the blobs of the batches needed."""
        import sqlalchemy as sa

        from ..db import feedback
        from ..db import prediction_batches as pb

        first_pk, first_pos = (
            (since_id // ID_STRIDE, since_id % ID_STRIDE) if since_id is not None else (-1, -1)
        )
        items: list[LoggedPrediction] = []
        lower = sa.and_(pb.c.id >= first_pk, *([pb.c.ts >= since] if since is not None else []))
        while len(items) < limit:
            meta = conn.execute(sa.select(pb.c.id, pb.c.n).where(lower).order_by(pb.c.id).limit(limit)).all()
            if not meta:
                break
            need, upto = limit - len(items), meta[-1].id
            for m in meta:  # the prefix of batches that holds enough records
                need -= m.n - (first_pos + 1 if m.id == first_pk else 0)
                if need <= 0:
                    upto = m.id
                    break
            rows = conn.execute(sa.select(pb).where(lower, pb.c.id <= upto).order_by(pb.c.id)).all()
            fb: dict[tuple[str, int], tuple[float, datetime]] = {}
            keys = [r.batch_key for r in rows]
            for i in range(0, len(keys), 500):
                for f in conn.execute(
                    sa.select(
                        feedback.c.batch_key, feedback.c.idx, feedback.c.actual, feedback.c.feedback_at
                    ).where(feedback.c.batch_key.in_(keys[i : i + 500]))
                ):
                    fb[(f.batch_key, f.idx)] = (f.actual, f.feedback_at)
            shadows = _shadows(conn, keys)
            for r in rows:
                start = first_pos + 1 if r.id == first_pk else 0
                if start >= r.n:
                    continue
                records, preds = _blobs(r.records, r.predictions, r.n, r.batch_key)
                ts = r.ts.replace(tzinfo=UTC)
                for pos in range(start, len(records) and r.n):
                    idx = r.first_index + pos if r.first_index >= 0 else -1
                    label = fb.get((r.batch_key, idx))
                    if unlabelled_only and label is not None:
                        continue
                    items.append(
                        LoggedPrediction(
                            id=r.id * ID_STRIDE + pos,
                            request_id=record_request_id(r.batch_key, r.first_index, pos),
                            ts=ts,
                            features=records[pos],
                            prediction=preds[pos],
                            latency_ms=r.latency_ms,
                            actual=label[0] if label else None,
                            feedback_at=label[1].replace(tzinfo=UTC) if label else None,
                            **_rollout_fields(r, pos, shadows),
                        )
                    )
                    if len(items) == limit:
                        return items
            lower = sa.and_(pb.c.id > upto, *([pb.c.ts >= since] if since is not None else []))
            first_pk = -1
        return items

    @staticmethod
    def _page_labelled(
        conn: sa.Connection, since_id: int | None, since: datetime | None, limit: int
    ) -> list[LoggedPrediction]:
        """Records with feedback, in id order: the feedback table joined to its batches."""
        import sqlalchemy as sa

        from ..db import feedback
        from ..db import prediction_batches as pb

        pos = feedback.c.idx - pb.c.first_index
        rid = (pb.c.id * ID_STRIDE + pos).label("rid")
        q = (
            sa.select(
                rid,
                pos.label("pos"),
                pb.c.id,
                pb.c.batch_key,
                pb.c.first_index,
                pb.c.ts,
                pb.c.model_version,
                pb.c.latency_ms,
                pb.c.arms,
                pb.c.candidate_version,
                feedback.c.actual,
                feedback.c.feedback_at,
            )
            .select_from(
                feedback.join(
                    pb,
                    sa.and_(
                        pb.c.batch_key == feedback.c.batch_key,
                        feedback.c.idx >= pb.c.first_index,
                        feedback.c.idx < pb.c.first_index + pb.c.n,
                    ),
                )
            )
            .order_by(rid)
            .limit(limit)
        )
        if since_id is not None:
            q = q.where(pb.c.id >= since_id // ID_STRIDE, rid > since_id)
        if since is not None:
            q = q.where(pb.c.ts >= since)
        hits = conn.execute(q).all()
        items: list[LoggedPrediction] = []
        batch_ids = list(dict.fromkeys(h.id for h in hits))
        for i in range(0, len(batch_ids), 20):  # blobs of a few batches at a time (bounded memory)
            chunk = batch_ids[i : i + 20]
            parsed = {
                b.id: _blobs(b.records, b.predictions, b.n, b.batch_key)
                for b in conn.execute(
                    sa.select(pb.c.id, pb.c.records, pb.c.predictions, pb.c.n, pb.c.batch_key).where(
                        pb.c.id.in_(chunk)
                    )
                )
            }
            shadows = _shadows(conn, list({h.batch_key for h in hits if h.id in parsed}))
            for h in hits:
                if h.id not in parsed or h.pos >= len(parsed[h.id][0]):
                    continue  # gone, or damaged
                records, preds = parsed[h.id]
                items.append(
                    LoggedPrediction(
                        id=h.rid,
                        request_id=record_request_id(h.batch_key, h.first_index, h.pos),
                        ts=h.ts.replace(tzinfo=UTC),
                        features=records[h.pos],
                        prediction=preds[h.pos],
                        latency_ms=h.latency_ms,
                        actual=h.actual,
                        feedback_at=h.feedback_at.replace(tzinfo=UTC),
                        **_rollout_fields(h, h.pos, shadows),
                    )
                )
        items.sort(key=lambda x: x.id)
        return items

    def _observe_errors(self, observe: ErrorObserver, labels: list[tuple[str, int, float]]) -> None:
        """Hand ``observe`` the absolute error of each newly stored label ((batch key, index, label)), by the
        model version that predicted. Read after the commit, outside the write transaction,
        a few batches' predictions at a time (a batch holds up to MAX_BATCH_RECORDS of them): bounded memory."""
        import sqlalchemy as sa

        from ..db import prediction_batches as pb

        by_batch: dict[str, list[tuple[int, float]]] = {}
        for key, idx, actual in labels:
            by_batch.setdefault(key, []).append((idx, actual))
        keys = list(by_batch)
        by_version: dict[int, list[float]] = {}
        with self.require().connect() as conn:
            for i in range(0, len(keys), 20):
                rows = conn.execute(
                    sa.select(pb.c.batch_key, pb.c.first_index, pb.c.model_version, pb.c.predictions).where(
                        pb.c.batch_key.in_(keys[i : i + 20])
                    )
                )
                for r in rows:
                    try:
                        preds = orjson.loads(r.predictions)
                        errs = [
                            abs(preds[idx - r.first_index] - actual) for idx, actual in by_batch[r.batch_key]
                        ]
                    except (orjson.JSONDecodeError, TypeError, IndexError):
                        continue  # a damaged row: no live error from it (the label itself is stored)
                    by_version.setdefault(r.model_version, []).extend(errs)
        for version, errors in by_version.items():
            observe(version, errors)

    def add_feedback(
        self, items: Sequence[FeedbackItem], overwrite: bool = False, observe: ErrorObserver | None = None
    ) -> FeedbackResponse:
        """Store the true outcomes of logged predictions; report (and do not store) unknown request ids.

        A prediction that already has a label: Conflict (409, nothing stored) unless ``overwrite``; then the
        earlier value goes to ``feedback_audit``. ``items`` hold each request id once. Read through
        ``LogWriter.flushed_store()`` so that predictions still queued count as logged. After the commit,
        ``observe(model_version, abs_errors)`` receives the error of every first label by the version that
        predicted (the live MAE of ``/metrics``; a corrected label is not counted twice).
        """
        import sqlalchemy as sa

        from ..db import feedback, feedback_audit
        from ..db import prediction_batches as pb

        engine = self.require()
        latest = {it.request_id: it.actual for it in items}
        ids = list(latest)
        split = {k: split_request_id(k) for k in ids}
        now = datetime.now(UTC).replace(tzinfo=None)
        try:
            with engine.begin() as conn:
                spans: dict[str, tuple[int, int]] = {}
                earlier: dict[str, float] = {}
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    keys = list({split[k][0] for k in chunk})
                    spans.update(
                        (r.batch_key, (r.first_index, r.n))
                        for r in conn.execute(
                            sa.select(pb.c.batch_key, pb.c.first_index, pb.c.n).where(
                                pb.c.batch_key.in_(keys)
                            )
                        )
                    )
                    earlier.update(
                        (r.request_id, r.actual)
                        for r in conn.execute(
                            sa.select(feedback.c.request_id, feedback.c.actual).where(
                                feedback.c.request_id.in_(chunk)
                            )
                        )
                    )
                known: list[str] = []
                unknown: list[str] = []
                for k in ids:
                    span = spans.get(split[k][0])
                    idx = split[k][1]
                    (known if span is not None and span[0] <= idx < span[0] + span[1] else unknown).append(k)
                again = [k for k in known if k in earlier]
                if again and not overwrite:
                    raise AlreadyLabelled(again)
                if again:
                    conn.execute(
                        feedback_audit.insert(),
                        [
                            {"request_id": k, "old_actual": earlier[k], "new_actual": latest[k], "at": now}
                            for k in again
                        ],
                    )
                    conn.execute(
                        feedback.update()
                        .where(feedback.c.request_id == sa.bindparam("rid"))
                        .values(actual=sa.bindparam("new_actual"), feedback_at=now),
                        [{"rid": k, "new_actual": latest[k]} for k in again],
                    )
                fresh = [k for k in known if k not in earlier]
                if fresh:
                    conn.execute(
                        feedback.insert(),
                        [
                            {
                                "request_id": k,
                                "actual": latest[k],
                                "feedback_at": now,
                                "batch_key": split[k][0],
                                "idx": split[k][1],
                            }
                            for k in fresh
                        ],
                    )
        except sa.exc.IntegrityError:
            # another request labelled one of these predictions between our read and our insert
            raise Conflict(
                "a label for one of these request ids arrived at the same time: send the request again"
            ) from None
        if observe is not None and fresh:
            try:
                self._observe_errors(observe, [(*split[k], latest[k]) for k in fresh])
            except Exception:  # noqa: BLE001 - the labels are committed: a metric must not turn that into a 5xx
                logger.warning("live error metric not updated for %d labels", len(fresh), exc_info=True)
        return FeedbackResponse(
            accepted=len(known), unknown_request_ids=unknown, overwritten_request_ids=again
        )
