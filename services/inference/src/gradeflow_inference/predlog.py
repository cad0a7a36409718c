"""The prediction log: a bounded in-memory queue drained by one writer thread, plus reads and feedback.

The request path only appends a chunk of row tuples to a deque (``submit``); the writer thread
turns them into JSON and inserts them in batches. Memory is bounded by ``queue_max`` rows (the
batch being written counts too): when the database is slow or down, new rows beyond the bound are
dropped and counted (metric, GET /health, GET /model, a warning line), never silently. ``stop()``
drains everything that is queued (retrying a failing database until ``shutdown_timeout``).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from gradeflow_shared.contracts import (
    FeedbackItem,
    FeedbackResponse,
    LoggedPrediction,
    PredictionPage,
)
from gradeflow_shared.errors import GradeflowError

if TYPE_CHECKING:
    import sqlalchemy as sa

logger = logging.getLogger(__name__)

# (request_id, unix time, model_version, features dict, prediction, latency_ms)
Row = tuple[str, float, int, dict[str, Any], float, float]


class LogUnavailable(GradeflowError):
    error_code = "LOG_UNAVAILABLE"
    status_code = 503


def _naive_utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def _SQLITE_TS(ts: float) -> str:  # noqa: N802 - used like a constant formatter
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


_SQLITE_CHUNK = 100  # rows per statement (6 parameters each; SQLite allows 32766)


@functools.lru_cache(maxsize=8)
def _sqlite_insert(rows: int) -> str:
    return (
        "INSERT INTO predictions (request_id, ts, model_version, features, prediction, latency_ms) VALUES "
        + ",".join(["(?,?,?,?,?,?)"] * rows)
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
        self._chunks: deque[Sequence[Row]] = deque()
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

    def submit(self, rows: Sequence[Row]) -> bool:
        """Queue rows for writing (O(1)); drop and count them when the queue is full."""
        n = len(rows)
        with self._cond:
            if self._stopping or self._pending + n > self.queue_max:
                self.dropped += n
                self._maybe_log_drop(n)
                return False
            self._chunks.append(rows)
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
                batch: list[Row] = []
                while self._chunks and len(batch) < self.batch_size:
                    batch.extend(self._chunks.popleft())
            while True:
                try:
                    self._write(batch)
                    self.error = None
                    backoff = 0.5
                    break
                except Exception as exc:  # noqa: BLE001 - db slow/down: keep the batch, retry, count drops
                    self.error = f"{exc.__class__.__name__}: {str(exc)[:300]}"
                    if self._stopping and time.monotonic() > self._stop_deadline:
                        self._finish(len(batch), dropped=True)
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

    def _write(self, batch: list[Row]) -> None:
        import sqlalchemy as sa

        from .db import predictions

        assert self.engine is not None
        dumps = orjson.dumps
        if self.engine.dialect.name == "sqlite":
            # multi-row INSERT statements through the DB-API: far cheaper than Core's per-row parameter
            # processing, and one sqlite3_step per chunk instead of one per row (fewer GIL hand-overs).
            # The timestamp text is the format SQLAlchemy's DateTime reads back.
            stamps: dict[float, str] = {}  # rows of one request share their timestamp
            try:
                with self.engine.begin() as conn:
                    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                    for i in range(0, len(batch), _SQLITE_CHUNK):
                        # small chunks: the GIL is handed back to the request threads between them
                        flat: list[Any] = []
                        for r in batch[i : i + _SQLITE_CHUNK]:
                            ts = stamps.get(r[1])
                            if ts is None:
                                ts = stamps[r[1]] = _SQLITE_TS(r[1])
                            flat += (r[0], ts, r[2], dumps(r[3]).decode(), r[4], r[5])
                        cur.execute(_sqlite_insert(len(flat) // 6), flat)
                        time.sleep(0)
                    cur.close()
                self._finish(len(batch), dropped=False)
                return
            except sa.exc.IntegrityError:
                pass  # one-by-one below
            except sqlite3.IntegrityError:
                pass
        values = [
            {
                "request_id": r[0],
                "ts": _naive_utc(r[1]),
                "model_version": r[2],
                "features": dumps(r[3]).decode(),
                "prediction": r[4],
                "latency_ms": r[5],
            }
            for r in batch
        ]
        try:
            with self.engine.begin() as conn:
                conn.execute(predictions.insert(), values)
        except sa.exc.IntegrityError:
            # a duplicate request id: write the others one by one, count the rest as dropped
            bad = 0
            for v in values:
                try:
                    with self.engine.begin() as conn:
                        conn.execute(predictions.insert(), [v])
                except sa.exc.IntegrityError:
                    bad += 1
            if bad:
                logger.warning("prediction log: %d rows with duplicate request ids dropped", bad)
            self._finish(len(batch) - bad, dropped=False)
            self._finish(bad, dropped=True)
            return
        self._finish(len(batch), dropped=False)

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
            n = sum(len(c) for c in self._chunks)
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
        import sqlalchemy as sa

        from .db import feedback, predictions

        engine = self._engine()
        self.flush(timeout=5.0)
        q = (
            sa.select(
                predictions.c.id,
                predictions.c.request_id,
                predictions.c.ts,
                predictions.c.model_version,
                predictions.c.features,
                predictions.c.prediction,
                predictions.c.latency_ms,
                feedback.c.actual,
                feedback.c.feedback_at,
            )
            .select_from(predictions.outerjoin(feedback, feedback.c.request_id == predictions.c.request_id))
            .order_by(predictions.c.id)
            .limit(limit)
        )
        if since_id is not None:
            q = q.where(predictions.c.id > since_id)
        if since is not None:
            if since.tzinfo is not None:
                since = since.astimezone(UTC).replace(tzinfo=None)
            q = q.where(predictions.c.ts >= since)
        if labelled is True:
            q = q.where(feedback.c.request_id.is_not(None))
        elif labelled is False:
            q = q.where(feedback.c.request_id.is_(None))
        with engine.connect() as conn:
            rows = conn.execute(q).all()
        items = [
            LoggedPrediction(
                id=r.id,
                request_id=r.request_id,
                ts=r.ts.replace(tzinfo=UTC),
                model_version=r.model_version,
                features=orjson.loads(r.features),
                prediction=r.prediction,
                latency_ms=r.latency_ms,
                actual=r.actual,
                feedback_at=r.feedback_at.replace(tzinfo=UTC) if r.feedback_at else None,
            )
            for r in rows
        ]
        next_id = items[-1].id if len(items) == limit and items else None
        return PredictionPage(items=items, next_since_id=next_id)

    def add_feedback(self, items: Iterable[FeedbackItem]) -> FeedbackResponse:
        """Store the true outcomes (latest wins per request id) and report ids with no logged prediction.

        Queued predictions are flushed first; feedback for an id not (yet) in the log is stored anyway
        and joins when the prediction row arrives (e.g. from another replica sharing the database).
        """
        import sqlalchemy as sa

        from .db import feedback, predictions

        engine = self._engine()
        latest: dict[str, float] = {}
        for it in items:
            latest[it.request_id] = it.actual
        self.flush(timeout=5.0)
        now = datetime.now(UTC).replace(tzinfo=None)
        ids = list(latest)
        known: set[str] = set()
        with engine.begin() as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                known.update(
                    conn.execute(
                        sa.select(predictions.c.request_id).where(predictions.c.request_id.in_(chunk))
                    ).scalars()
                )
                conn.execute(feedback.delete().where(feedback.c.request_id.in_(chunk)))
            conn.execute(
                feedback.insert(),
                [{"request_id": k, "actual": v, "feedback_at": now} for k, v in latest.items()],
            )
        unknown = [k for k in ids if k not in known]
        return FeedbackResponse(accepted=len(ids) - len(unknown), unknown_request_ids=unknown)


def _safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for display
        return "<unparseable url>"
