"""The prediction log's request side: a bounded in-memory queue drained by one writer thread.

The request path only appends one ``LogBatch`` to a deque (``submit``: O(1), no per-record work); the
writer thread inserts them in batches through the store. Queue bound, written/dropped counts and
``LOG_BATCH_SIZE`` count records. Memory is bounded by ``queue_max`` records (the batch being written
counts too): when the database is slow or down, new records beyond the bound are dropped and counted
(metric, GET /health, GET /model, a warning line), never silently. ``stop()`` drains everything that is
queued (retrying a failing database until ``shutdown_timeout``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from .store import LogBatch, LogStore, LogUnavailable

logger = logging.getLogger(__name__)


class LogWriter:
    def __init__(
        self,
        store: LogStore,
        *,
        batch_size: int = 500,
        queue_max: int = 100_000,
        flush_interval: float = 0.2,
        shutdown_timeout: float = 30.0,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.queue_max = queue_max
        self.flush_interval = flush_interval
        self.shutdown_timeout = shutdown_timeout
        self.error: str | None = None  # last database error (None when healthy)
        self._chunks: deque[LogBatch] = deque()
        self._cond = threading.Condition()
        self._pending = 0  # records queued or being written
        self._accepted = 0  # records ever accepted into the queue
        self._done = 0  # records ever written or dropped by the writer
        self.written = 0
        self.dropped = 0
        self._last_drop_log = 0.0
        self._stopping = False
        self._stop_deadline = float("inf")
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ request path
    def submit(self, batch: LogBatch) -> bool:
        """Queue one request's batch for writing (O(1)); drop and count its records when the queue is full."""
        n = batch.n
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

    def flushed_store(self, ready_timeout: float = 10.0, flush_timeout: float = 5.0) -> LogStore:
        """The store for a read, once the database is open and every record accepted so far is written
        (a client sees its own predictions); LogUnavailable (503) while the database cannot be opened."""
        if not self.store.ready.wait(ready_timeout):
            raise LogUnavailable(f"prediction log database is not available: {self.error}")
        self.flush(timeout=flush_timeout)
        return self.store

    # ------------------------------------------------------------------ writer thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = 0.5
        while not self.store.ready.is_set():
            try:
                self.store.open()
                self.error = None
                logger.info("prediction log ready (%s)", self.store.safe_url())
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
                    rows += b.n
            while True:
                try:
                    duplicates = self.store.write(batch)
                    self.error = None
                    backoff = 0.5
                    self._finish(rows - duplicates, dropped=False)
                    if duplicates:
                        self._finish(duplicates, dropped=True)
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
            n = sum(c.n for c in self._chunks)
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
        """Wait until every record accepted before this call is written (or dropped). True if done."""
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
        """Stop accepting records and write everything queued (up to shutdown_timeout while the db fails)."""
        with self._cond:
            self._stopping = True
            self._stop_deadline = time.monotonic() + self.shutdown_timeout
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        logger.info("prediction log stopped: %d rows written, %d dropped", self.written, self.dropped)
        self.store.close()

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "ready": self.store.ready.is_set(),
            "queue_depth": self._pending,
            "queue_max": self.queue_max,
            "written": self.written,
            "dropped": self.dropped,
            "db_error": self.error,
            "url": self.store.safe_url(),
        }
