"""The prediction log's request side: a bounded in-memory queue drained by one writer thread.

The request path only appends one ``LogBatch`` to a deque (``submit``: O(1), no per-record work); the
writer thread inserts them in batches through the store. Queue bound, written/dropped counts and
``LOG_BATCH_SIZE`` count records. Memory is bounded by ``queue_max`` records (the batch being written
counts too): when the database is slow or down, new records beyond the bound are dropped and counted
(metric, GET /health, GET /model, a warning line), never silently. ``stop()`` drains everything that is
queued (retrying a failing database until ``shutdown_timeout``).

Crash window (``LOG_DURABLE_ACK=false``, the default): a prediction is answered once its row is QUEUED, so
a process killed hard (SIGKILL, OOM) loses the rows queued or being written: those of the last
``LOG_FLUSH_INTERVAL`` (0.2 s), more while the database is slow or down. They are counted on the next start
(``ledger``: ``inference_log_lost_on_crash_total``, ``log_lost_on_crash`` in ``/health``).

Durable acknowledgement (``LOG_DURABLE_ACK=true``): ``submit_acked`` queues the row and the request waits
until the writer thread has committed it. Group commit: the requests of one event-loop turn wake the
writer once (``call_soon``); it commits everything queued at that moment in one transaction and then
releases every request of that commit with one ``call_soon_threadsafe`` per event loop; requests arriving
meanwhile form the next commit. No commit per request. On SQLite the event loop commits the turn's rows
itself when it can (``_commit_here``): a local WAL commit costs tens of microseconds, while the hand-over
to the writer thread and back costs two thread wake-ups, several hundred microseconds on a busy 2-core
machine (it made durable ack cost 45 % of batch-1 throughput). Not when the writer thread is writing, the
database reports errors, or the inline commits average more than ``inline_max_seconds`` (a slow disk:
then the writer thread commits for a minute); another writer's lock is waited for 20 ms at most, then the
rows go to the writer thread. PostgreSQL commits are network round trips and always use the thread. A row that cannot be queued (queue full,
stopping) or committed within ``ack_timeout`` gets a 503 instead of an answer. Durable against a crash of the process; against power loss only as far as the
database makes its commits durable (SQLite here runs WAL with ``synchronous=NORMAL``: the last commits
before a power cut may be lost; PostgreSQL: ``synchronous_commit``).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from .ledger import CrashLedger
from .store import LogBatch, LogStore, LogUnavailable

logger = logging.getLogger(__name__)

INLINE_BUSY_MS = 20  # an inline commit waits at most this long for another writer's lock
INLINE_WINDOW = 16  # inline commits are judged slow or not by the median of this many


class LogWriter:
    def __init__(
        self,
        store: LogStore,
        *,
        batch_size: int = 500,
        queue_max: int = 100_000,
        flush_interval: float = 0.2,
        shutdown_timeout: float = 30.0,
        ledger_dir: Path | None = None,
        ack_timeout: float = 10.0,
        inline_max_seconds: float = 0.005,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.queue_max = queue_max
        self.flush_interval = flush_interval
        self.shutdown_timeout = shutdown_timeout
        self.error: str | None = None  # last database error (None when healthy)
        self._chunks: deque[LogBatch] = deque()
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # the writer thread waits on it for work
        # flush() waits on this one for rows to finish: finishing rows does not wake the writer thread (a
        # wake-up costs more than an inline commit)
        self._done_cond = threading.Condition(lock)
        self._pending = 0  # records queued or being written
        self._accepted = 0  # records ever accepted into the queue
        self._done = 0  # records ever written or dropped by the writer
        self.written = 0
        self.dropped = 0
        self._last_drop_log = 0.0
        self._stopping = False
        self._stop_deadline = float("inf")
        self._thread: threading.Thread | None = None
        self.ledger = CrashLedger(ledger_dir) if ledger_dir is not None else None
        self.lost_on_crash = 0  # records a previous process acknowledged and never wrote (ledger)
        self.ack_timeout = ack_timeout
        self._batches_in = 0  # batches ever accepted (sequence of the next one)
        self._batches_done = 0  # batches ever committed or dropped by the writer, in queue order
        self._waiters: deque[tuple[int, asyncio.Future[bool | None]]] = deque()  # (batch seq, future)
        self._kick_pending = False
        # held while batches are taken from the queue and written: the writer thread and the event loop's
        # inline commit (``_commit_here``) never write at the same time, and batches finish in queue order
        self._write_lock = threading.Lock()
        self.inline_commit = store.is_sqlite_file
        self.inline_max_seconds = inline_max_seconds
        self._inline_off_until = 0.0
        self._inline_times: deque[float] = deque(
            maxlen=INLINE_WINDOW
        )  # wall time of the last inline commits (s)
        self.inline_commits = 0
        self._checkpointed = 0  # inline_commits at the last WAL checkpoint

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
            self._batches_in += 1
            if self.ledger is not None and self._accepted > self.ledger.reserved:
                self.ledger.reserve(self._accepted)
            if self._pending >= self.batch_size:
                self._cond.notify()
        return True

    def submit_acked(self, batch: LogBatch) -> asyncio.Future[bool | None] | None:
        """Queue ``batch`` and wake the writer; the future (of the running loop) becomes True once the row
        is committed, False if it was dropped. None: not queued (queue full or stopping; counted dropped)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool | None] = loop.create_future()
        with self._cond:
            seq = self._batches_in
            if not self.submit(batch):  # re-entrant: a Condition's default lock is an RLock
                return None
            self._waiters.append((seq, fut))
        if not self._kick_pending:
            # wake the writer once per event-loop turn, after every request handled in this turn has queued
            # its row: they share one commit
            self._kick_pending = True
            loop.call_soon(self._kick)
        return fut

    def _kick(self) -> None:
        self._kick_pending = False
        if self.inline_commit and self._commit_here():
            return
        with self._cond:
            self._cond.notify()

    def _commit_here(self) -> bool:
        """Commit the rows queued in this event-loop turn on the loop itself, when that is cheap and safe:
        SQLite (a local WAL commit, tens of microseconds), the database healthy, the writer thread idle, and
        no recent inline commit slower than ``inline_max_seconds``. Handing the rows to the writer thread and
        back costs two thread wake-ups, which on a busy machine cost far more than the commit. False: the
        writer thread must do it (nothing was taken from the queue)."""
        if self.error is not None or not self.store.ready.is_set() or self._stopping:
            return False
        if time.monotonic() < self._inline_off_until:
            return False
        if not self._write_lock.acquire(blocking=False):
            return False  # the writer thread is writing: it takes these rows next
        try:
            with self._cond:
                if not self._chunks:
                    return True
                batch = list(self._chunks)
                self._chunks.clear()
                rows = sum(b.n for b in batch)
                upto = self._batches_done + len(batch)
            t0 = time.perf_counter()
            try:
                # another writer's lock (a /feedback write) is waited for briefly here, not for 30 s
                self.store.write_here(batch, INLINE_BUSY_MS / 1000)
            except Exception:  # noqa: BLE001 - give the rows back to the writer thread, which retries and reports
                with self._cond:
                    self._chunks.extendleft(reversed(batch))
                return False
            self._inline_times.append(time.perf_counter() - t0)
            if len(self._inline_times) == self._inline_times.maxlen:
                # the median of the last commits: one that waited for a CPU or a WAL checkpoint does not
                # count, a slow disk does; then the loop must not stall on it: the writer thread commits for
                # the next minute
                med = statistics.median(self._inline_times)
                self._inline_times.clear()
                if med > self.inline_max_seconds:
                    self._inline_off_until = time.monotonic() + 60.0
                    logger.warning(
                        "prediction log: commits on the event loop take %.1f ms (median); the writer thread "
                        "commits for the next minute",
                        med * 1000,
                    )
            self.inline_commits += 1
            self._finish(rows, dropped=False, batches_upto=upto)
            return True
        finally:
            self._write_lock.release()

    async def acked(self, batch: LogBatch) -> None:
        """Queue ``batch`` and return once its row is committed (LogUnavailable, 503, otherwise)."""
        fut = self.submit_acked(batch)
        if fut is None:
            raise LogUnavailable(
                "the prediction could not be logged (log queue full or shutting down) and is not acknowledged "
                f"(LOG_DURABLE_ACK); database error: {self.error}"
            )
        timer = asyncio.get_running_loop().call_later(self.ack_timeout, _resolve, (fut,), None)
        try:
            ok = await fut
        finally:
            timer.cancel()
        if not ok:
            raise LogUnavailable(
                f"the prediction log did not commit this prediction within {self.ack_timeout:g}s "
                f"(database error: {self.error}); it is not acknowledged (LOG_DURABLE_ACK) and may or may "
                "not be logged later"
                if ok is None
                else "the prediction was dropped by the log (shutdown while the database fails) and is not "
                "acknowledged (LOG_DURABLE_ACK)"
            )

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
        """Count the rows lost by crashed predecessors (ledger), then start the writer thread."""
        if self.ledger is not None:
            self.lost_on_crash += self.ledger.open()
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
        while True:
            with self._cond:
                if not self._chunks and not self._stopping:
                    self._cond.wait(self.flush_interval)
                if not self._chunks:
                    if self._stopping:
                        return
                    idle = True
                else:
                    idle = False
            if idle:
                self._checkpoint()
                continue
            with self._write_lock:
                if not self._write_queued():
                    return

    def _checkpoint(self) -> None:
        """Copy the WAL of the inline commits into the database, here on the writer thread: their
        connection does not checkpoint by itself (a checkpoint syncs the database file, which must not
        stall the event loop), so the WAL would otherwise only grow."""
        if self.inline_commits == self._checkpointed:
            return
        self._checkpointed = self.inline_commits
        try:
            self.store.checkpoint()
        except Exception as exc:  # noqa: BLE001 - retried at the next idle moment; writes carry on
            logger.warning("prediction log: WAL checkpoint failed (%s)", exc)

    def _write_queued(self) -> bool:
        """Take up to ``batch_size`` records from the queue and write them, retrying while the database
        fails (caller holds ``_write_lock``). False: the writer must end (shutdown timeout passed)."""
        with self._cond:
            if not self._chunks:
                return True  # the event loop committed them (``_commit_here``)
            batch: list[LogBatch] = []
            rows = 0
            while self._chunks and rows < self.batch_size:
                b = self._chunks.popleft()
                batch.append(b)
                rows += b.n
            upto = self._batches_done + len(batch)
        backoff = 0.5
        while True:
            try:
                duplicates = self.store.write(batch)
                self.error = None
                self._finish(rows - duplicates, dropped=False, batches_upto=upto)
                if duplicates:
                    self._finish(duplicates, dropped=True)
                return True
            except Exception as exc:  # noqa: BLE001 - db slow/down: keep the batch, retry, count drops
                self.error = f"{exc.__class__.__name__}: {str(exc)[:300]}"
                if self._stopping and time.monotonic() > self._stop_deadline:
                    self._finish(rows, dropped=True, batches_upto=upto, ok=False)
                    self._drop_all(f"shutdown timeout while the database fails ({self.error})")
                    return False
                logger.warning("prediction log write failed (%s); retrying in %.1fs", self.error, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _wait_stop(self, seconds: float) -> bool:
        with self._cond:
            if not self._stopping:
                self._cond.wait(seconds)
            return self._stopping

    def _finish(self, n: int, dropped: bool, batches_upto: int | None = None, ok: bool = True) -> None:
        """Count ``n`` records as written or dropped; with ``batches_upto``: the batches up to that sequence
        are finished, release their waiting requests (``ok``: committed)."""
        with self._cond:
            self._pending -= n
            self._done += n
            if dropped:
                self.dropped += n
            else:
                self.written += n
            if self.ledger is not None:
                self.ledger.done(self._done)
            if batches_upto is not None:
                self._batches_done = batches_upto
                self._release(ok)
            self._done_cond.notify_all()

    def _release(self, ok: bool) -> None:
        """Resolve the futures of the finished batches: one call_soon_threadsafe per event loop (caller
        holds the lock)."""
        if not self._waiters or self._waiters[0][0] >= self._batches_done:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[bool | None]]] = {}
        while self._waiters and self._waiters[0][0] < self._batches_done:
            fut = self._waiters.popleft()[1]
            by_loop.setdefault(fut.get_loop(), []).append(fut)
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # the writer thread
            here = None
        for loop, futs in by_loop.items():
            if loop is here:  # an inline commit (``_commit_here``): resolve now, no wake-up through the pipe
                _resolve(futs, ok)
                continue
            try:
                loop.call_soon_threadsafe(_resolve, futs, ok)
            except RuntimeError:  # the loop is closed: nobody waits any more
                continue

    def _drop_all(self, why: str) -> None:
        with self._cond:
            n = sum(c.n for c in self._chunks)
            self._batches_done += len(self._chunks)
            self._chunks.clear()
            self._pending -= n
            self._done += n
            self.dropped += n
            if self.ledger is not None:
                self.ledger.done(self._done)
            self._release(False)
            self._done_cond.notify_all()
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
                self._done_cond.wait(min(left, 0.05))
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
        if self.ledger is not None:
            self.ledger.close()

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "ready": self.store.ready.is_set(),
            "queue_depth": self._pending,
            "queue_max": self.queue_max,
            "written": self.written,
            "dropped": self.dropped,
            "lost_on_crash": self.lost_on_crash,
            "inline_commits": self.inline_commits,
            "db_error": self.error,
            "url": self.store.safe_url(),
        }


def _resolve(futs: Any, ok: bool | None) -> None:
    """Set the result of the futures still waiting (on their event loop's thread)."""
    for fut in futs:
        if not fut.done():
            fut.set_result(ok)
