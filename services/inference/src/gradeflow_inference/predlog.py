"""The prediction log: a bounded in-memory queue drained by one writer thread, plus reads and feedback.

One database row per request (table ``prediction_batches``): the request's records as one JSON blob
(the request body as received, already validated), the predictions as one JSON array, the model
version, time and latency. The request path only appends one tuple to a deque (``submit``: no
per-record work); the writer thread inserts them in batches. Reads expand batches into the per-record
``LoggedPrediction`` items of the contract, with derived ids:

* record id = batch id * ``ID_STRIDE`` + position in the batch (ascending in log order);
* request id = the batch key (28 hex: 48-bit ms clock + 64 random bits) + the index as 4 hex digits,
  so it is 32 hex like before and feedback finds its batch without a per-record index.

Queue bound, written/dropped counts and ``LOG_BATCH_SIZE`` count records, as before. Memory is bounded by ``queue_max`` rows (the
batch being written counts too): when the database is slow or down, new rows beyond the bound are
dropped and counted (metric, GET /health, GET /model, a warning line), never silently. ``stop()``
drains everything that is queued (retrying a failing database until ``shutdown_timeout``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from gradeflow_shared.contracts import (
    RECORD_ID_STRIDE,
    FeedbackItem,
    FeedbackResponse,
    LoggedPrediction,
    PredictionPage,
)
from gradeflow_shared.errors import GradeflowError

if TYPE_CHECKING:
    import sqlalchemy as sa

logger = logging.getLogger(__name__)

# (batch_key, unix time, model_version, records JSON (a JSON array of records or {"records": [...]}),
#  predictions (sequence of n floats), latency_ms, n)
LogBatch = tuple[str, float, int, bytes, Sequence[float], float, int]

ID_STRIDE = RECORD_ID_STRIDE  # record id = batch id * ID_STRIDE + position (batches hold <= ID_STRIDE)
_HEX32 = re.compile(r"[0-9a-f]{32}")


def new_batch_key() -> str:
    """28 hex digits, time-ordered (48-bit ms clock + 64 random bits): cheap appends to the unique index."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(8).hex()}"


def request_ids(batch_key: str, n: int) -> list[str]:
    """The request ids of the n records of one batch: batch key + index as 4 hex digits."""
    return [f"{batch_key}{i:04x}" for i in range(n)]


@functools.lru_cache(maxsize=1)
def _index_parts() -> tuple[bytes, ...]:
    # the JSON text after the batch key of record i's request id, up to its prediction value
    return tuple(b'%04x","prediction":' % i for i in range(ID_STRIDE))


def predict_response(version: int, batch_key: str, predictions: Sequence[float]) -> bytes:
    """The JSON answer of POST /predict, built without Python code per record.

    Byte for byte ``orjson.dumps({"model_version": version, "predictions": [{"request_id": rid,
    "prediction": p}, ...]})`` with ``rid`` from request_ids(batch_key, n): orjson encodes the
    predictions once, and the records are joined from a cached table of index suffixes (slice
    assignments and one bytes.join, all in C)."""
    n = len(predictions)
    if n == 0 or n > ID_STRIDE:
        raise ValueError(f"a batch holds 1..{ID_STRIDE} predictions, got {n}")
    key = batch_key.encode()
    values = orjson.dumps(predictions, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    parts = [b'},{"request_id":"' + key] * (3 * n)
    parts[0] = b'{"model_version":%d,"predictions":[{"request_id":"%s' % (version, key)
    parts[1::3] = _index_parts()[:n]
    parts[2::3] = values
    parts.append(b"}]}")
    return b"".join(parts)


def split_request_id(request_id: str) -> tuple[str, int]:
    """(batch key, index) of a request id; ids not made by request_ids() map to (the id, -1)."""
    if len(request_id) == 32 and _HEX32.fullmatch(request_id):
        return request_id[:28], int(request_id[28:], 16)
    return request_id, -1


def _record_request_id(batch_key: str, first_index: int, pos: int) -> str:
    return batch_key if first_index < 0 else f"{batch_key}{first_index + pos:04x}"


def _records_of(blob: str | bytes) -> list[Any]:
    data = orjson.loads(blob)
    return data["records"] if isinstance(data, dict) else data  # type: ignore[no-any-return]


class LogUnavailable(GradeflowError):
    error_code = "LOG_UNAVAILABLE"
    status_code = 503


def _naive_utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def _SQLITE_TS(ts: float) -> str:  # noqa: N802 - used like a constant formatter
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


_SQLITE_CHUNK = 100  # rows per statement (9 parameters each; SQLite allows 32766)


@functools.lru_cache(maxsize=8)
def _sqlite_insert(rows: int) -> str:
    return (
        "INSERT INTO prediction_batches (batch_key, first_index, n, ts, model_version, records, predictions, "
        "latency_ms) VALUES " + ",".join(["(?,?,?,?,?,?,?,?)"] * rows)
    )


class PredictionLog:
    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 500,
        queue_max: int = 100_000,
        flush_interval: float = 0.2,
        shutdown_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.batch_size = batch_size
        self.queue_max = queue_max
        self.flush_interval = flush_interval
        self.shutdown_timeout = shutdown_timeout
        self.engine: sa.Engine | None = None
        self.ready = threading.Event()
        self.error: str | None = None  # last database error (None when healthy)
        self._chunks: deque[LogBatch] = deque()
        self._cond = threading.Condition()
        self._pending = 0  # rows queued or being written
        self._accepted = 0  # rows ever accepted into the queue
        self._done = 0  # rows ever written or dropped by the writer
        self.written = 0
        self.dropped = 0
        self._last_drop_log = 0.0
        self._stopping = False
        self._stop_deadline = float("inf")
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ request path
    @property
    def depth(self) -> int:
        return self._pending

    def submit(self, batch: LogBatch) -> bool:
        """Queue one request's batch for writing (O(1)); drop and count its records when the queue is full."""
        n = batch[6]
        with self._cond:
            if self._stopping or self._pending + n > self.queue_max:
                self.dropped += n
                self._maybe_log_drop(n)
                return False
            self._chunks.append(batch)
            self._pending += n
            self._accepted += n
            if self._pending >= self.batch_size:
                self._cond.notify()
        return True

    def _maybe_log_drop(self, n: int) -> None:
        now = time.monotonic()
        if now - self._last_drop_log > 5.0:
            self._last_drop_log = now
            logger.warning(
                "prediction log queue full (%d rows, db error: %s): dropped %d rows, %d dropped in total",
                self._pending,
                self.error,
                n,
                self.dropped,
            )

    # ------------------------------------------------------------------ writer thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def open(self) -> None:
        """Create the engine and run the migrations (retried by the writer until it works)."""
        from .db import make_engine, upgrade

        engine = make_engine(self.url)
        try:
            upgrade(engine)
        except Exception:
            engine.dispose()
            raise
        self.engine = engine
        self.ready.set()

    def _run(self) -> None:
        backoff = 0.5
        while not self.ready.is_set():
            try:
                self.open()
                self.error = None
                logger.info("prediction log ready (%s)", _safe_url(self.url))
            except Exception as exc:  # noqa: BLE001 - database down at start: retry, rows queue (bounded)
                self.error = f"{exc.__class__.__name__}: {str(exc)[:300]}"
                logger.warning(
                    "prediction log database not ready (%s); retrying in %.1fs", self.error, backoff
                )
                if self._wait_stop(backoff):  # noqa: SIM102
                    if time.monotonic() > self._stop_deadline:
                        self._drop_all("database never became ready")
                        return
                    time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        backoff = 0.5
        while True:
            with self._cond:
                if not self._chunks and not self._stopping:
                    self._cond.wait(self.flush_interval)
                if not self._chunks:
                    if self._stopping:
                        return
                    continue
                batch: list[LogBatch] = []
                rows = 0
                while self._chunks and rows < self.batch_size:
                    b = self._chunks.popleft()
                    batch.append(b)
                    rows += b[6]
            while True:
                try:
                    self._write(batch)
                    self.error = None
                    backoff = 0.5
                    break
                except Exception as exc:  # noqa: BLE001 - db slow/down: keep the batch, retry, count drops
                    self.error = f"{exc.__class__.__name__}: {str(exc)[:300]}"
                    if self._stopping and time.monotonic() > self._stop_deadline:
                        self._finish(rows, dropped=True)
                        self._drop_all(f"shutdown timeout while the database fails ({self.error})")
                        return
                    logger.warning("prediction log write failed (%s); retrying in %.1fs", self.error, backoff)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)

    def _wait_stop(self, seconds: float) -> bool:
        with self._cond:
            if not self._stopping:
                self._cond.wait(seconds)
            return self._stopping

    def _write(self, batch: list[LogBatch]) -> None:
        import sqlalchemy as sa

        from .db import prediction_batches

        assert self.engine is not None
        dumps = orjson.dumps
        total = sum(b[6] for b in batch)
        if self.engine.dialect.name == "sqlite":
            # multi-row INSERT statements through the DB-API: far cheaper than Core's per-row parameter
            # processing. The timestamp text is the format SQLAlchemy's DateTime reads back.
            try:
                with self.engine.begin() as conn:
                    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                    for i in range(0, len(batch), _SQLITE_CHUNK):
                        flat: list[Any] = []
                        for r in batch[i : i + _SQLITE_CHUNK]:
                            flat += (
                                r[0],
                                0,
                                r[6],
                                _SQLITE_TS(r[1]),
                                r[2],
                                r[3].decode(),
                                dumps(r[4], option=orjson.OPT_SERIALIZE_NUMPY).decode(),
                                r[5],
                            )
                        cur.execute(_sqlite_insert(len(flat) // 8), flat)
                    cur.close()
                self._finish(total, dropped=False)
                return
            except sa.exc.IntegrityError:
                pass  # one-by-one below
            except sqlite3.IntegrityError:
                pass
        values: list[dict[str, Any]] = [
            {
                "batch_key": r[0],
                "first_index": 0,
                "n": r[6],
                "ts": _naive_utc(r[1]),
                "model_version": r[2],
                "records": r[3].decode(),
                "predictions": dumps(r[4], option=orjson.OPT_SERIALIZE_NUMPY).decode(),
                "latency_ms": r[5],
            }
            for r in batch
        ]
        try:
            with self.engine.begin() as conn:
                conn.execute(prediction_batches.insert(), values)
        except sa.exc.IntegrityError:
            # a duplicate batch key: write the others one by one, count the records of the rest as dropped
            bad = 0
            for v in values:
                try:
                    with self.engine.begin() as conn:
                        conn.execute(prediction_batches.insert(), [v])
                except sa.exc.IntegrityError:
                    bad += int(v["n"])
            if bad:
                logger.warning("prediction log: %d records with duplicate request ids dropped", bad)
            self._finish(total - bad, dropped=False)
            self._finish(bad, dropped=True)
            return
        self._finish(total, dropped=False)

    def _finish(self, n: int, dropped: bool) -> None:
        with self._cond:
            self._pending -= n
            self._done += n
            if dropped:
                self.dropped += n
            else:
                self.written += n
            self._cond.notify_all()

    def _drop_all(self, why: str) -> None:
        with self._cond:
            n = sum(c[6] for c in self._chunks)
            self._chunks.clear()
            self._pending -= n
            self._done += n
            self.dropped += n
            self._cond.notify_all()
        if n:
            logger.error(
                "prediction log: dropped %d queued rows (%s); %d dropped in total", n, why, self.dropped
            )

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row accepted before this call is written (or dropped). True if done."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._accepted
            self._cond.notify_all()
            while self._done < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._cond.wait(min(left, 0.05))
                self._cond.notify_all()
        return True

    def stop(self) -> None:
        """Stop accepting rows and write everything queued (up to shutdown_timeout while the db fails)."""
        with self._cond:
            self._stopping = True
            self._stop_deadline = time.monotonic() + self.shutdown_timeout
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        logger.info("prediction log stopped: %d rows written, %d dropped", self.written, self.dropped)
        if self.engine is not None:
            self.engine.dispose()

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "ready": self.ready.is_set(),
            "queue_depth": self._pending,
            "queue_max": self.queue_max,
            "written": self.written,
            "dropped": self.dropped,
            "db_error": self.error,
            "url": _safe_url(self.url),
        }

    # ------------------------------------------------------------------ reads / feedback
    def _engine(self, timeout: float = 10.0) -> sa.Engine:
        if not self.ready.wait(timeout) or self.engine is None:
            raise LogUnavailable(f"prediction log database is not available: {self.error}")
        return self.engine

    def page(
        self, since_id: int | None, since: datetime | None, limit: int, labelled: bool | None
    ) -> PredictionPage:
        engine = self._engine()
        self.flush(timeout=5.0)
        if since is not None and since.tzinfo is not None:
            since = since.astimezone(UTC).replace(tzinfo=None)
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

        from .db import feedback
        from .db import prediction_batches as pb

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
            for r in rows:
                start = first_pos + 1 if r.id == first_pk else 0
                if start >= r.n:
                    continue
                records = _records_of(r.records)
                preds = orjson.loads(r.predictions)
                ts = r.ts.replace(tzinfo=UTC)
                for pos in range(start, r.n):
                    idx = r.first_index + pos if r.first_index >= 0 else -1
                    label = fb.get((r.batch_key, idx))
                    if unlabelled_only and label is not None:
                        continue
                    items.append(
                        LoggedPrediction(
                            id=r.id * ID_STRIDE + pos,
                            request_id=_record_request_id(r.batch_key, r.first_index, pos),
                            ts=ts,
                            model_version=r.model_version,
                            features=records[pos],
                            prediction=preds[pos],
                            latency_ms=r.latency_ms,
                            actual=label[0] if label else None,
                            feedback_at=label[1].replace(tzinfo=UTC) if label else None,
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

        from .db import feedback
        from .db import prediction_batches as pb

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
            blobs = {
                b.id: (b.records, b.predictions)
                for b in conn.execute(
                    sa.select(pb.c.id, pb.c.records, pb.c.predictions).where(pb.c.id.in_(chunk))
                )
            }
            parsed = {k: (_records_of(v[0]), orjson.loads(v[1])) for k, v in blobs.items()}
            for h in hits:
                if h.id not in parsed:
                    continue
                records, preds = parsed[h.id]
                items.append(
                    LoggedPrediction(
                        id=h.rid,
                        request_id=_record_request_id(h.batch_key, h.first_index, h.pos),
                        ts=h.ts.replace(tzinfo=UTC),
                        model_version=h.model_version,
                        features=records[h.pos],
                        prediction=preds[h.pos],
                        latency_ms=h.latency_ms,
                        actual=h.actual,
                        feedback_at=h.feedback_at.replace(tzinfo=UTC),
                    )
                )
        items.sort(key=lambda x: x.id)
        return items

    def add_feedback(self, items: Iterable[FeedbackItem]) -> FeedbackResponse:
        """Store the true outcomes (latest wins per request id) and report ids with no logged prediction.

        Queued predictions are flushed first; feedback for an id not (yet) in the log is stored anyway
        and joins when the prediction row arrives (e.g. from another replica sharing the database).
        """
        import sqlalchemy as sa

        from .db import feedback
        from .db import prediction_batches as pb

        engine = self._engine()
        latest: dict[str, float] = {}
        for it in items:
            latest[it.request_id] = it.actual
        self.flush(timeout=5.0)
        now = datetime.now(UTC).replace(tzinfo=None)
        ids = list(latest)
        split = {k: split_request_id(k) for k in ids}
        spans: dict[str, tuple[int, int]] = {}
        with engine.begin() as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                keys = list({split[k][0] for k in chunk})
                spans.update(
                    (r.batch_key, (r.first_index, r.n))
                    for r in conn.execute(
                        sa.select(pb.c.batch_key, pb.c.first_index, pb.c.n).where(pb.c.batch_key.in_(keys))
                    )
                )
                conn.execute(feedback.delete().where(feedback.c.request_id.in_(chunk)))
            conn.execute(
                feedback.insert(),
                [
                    {
                        "request_id": k,
                        "actual": v,
                        "feedback_at": now,
                        "batch_key": split[k][0],
                        "idx": split[k][1],
                    }
                    for k, v in latest.items()
                ],
            )
        unknown = []
        for k in ids:
            key, idx = split[k]
            span = spans.get(key)
            if span is None or not (span[0] <= idx < span[0] + span[1]):
                unknown.append(k)
        return FeedbackResponse(accepted=len(ids) - len(unknown), unknown_request_ids=unknown)


def _safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for display
        return "<unparseable url>"
