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

Durable acknowledgement (``LOG_DURABLE_ACK=true``): ``acked`` queues the row as above and answers only
once the row is on the data volume, in this process's journal (``predlog.journal``): the event loop writes
the rows of every request that finished in one turn with a single ``write`` and releases them; the writer
thread then inserts them into the database as usual and the journal drops them once committed. A process
that dies leaves its journal; the next start replays it into the database. Group commit without a thread
hand-over or a database commit on the request path: a database commit per answer costs a lone client far
more (a SQLite commit is 60-250 microseconds of system calls, a PostgreSQL commit a round trip). A row that
cannot be queued (queue full, stopping) or journalled (disk full) gets a 503 instead of an answer. Durable
against a crash of the process, not of the machine (no fsync; the SQLite log itself runs WAL with
``synchronous=NORMAL``, which gives the same). Without a journal folder (``ledger_dir`` None, unit tests)
the request waits for the writer thread's commit instead.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from .journal import AckJournal
from .ledger import CrashLedger
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
        ledger_dir: Path | None = None,
        ack_timeout: float = 10.0,
        durable_ack: bool = False,
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
        # durable acknowledgement's journal (beside the ledger; always read at start: a predecessor may
        # have run with it); acked() without one waits for the writer thread's commit
        self.journal = AckJournal(ledger_dir) if ledger_dir is not None else None
        self.durable_ack = durable_ack
        self._journal_turn: list[tuple[int, LogBatch, asyncio.Future[bool | None]]] = []
        self.replayed = 0  # records a dead process acknowledged, replayed from its journal at start
        self.journalled = 0  # records acknowledged through the journal
        self._dropped_at_stop = False  # the stop gave up on queued rows (their journal is kept)

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
        """Queue ``batch``; the future (of the running loop) becomes True once the row is durable: in the
        journal (written once per event-loop turn for every request of the turn) or, without a journal,
        committed by the writer thread; False if it was dropped. None: not queued (queue full or
        stopping; counted dropped)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool | None] = loop.create_future()
        with self._cond:
            seq = self._batches_in
            if not self.submit(batch):  # re-entrant: a Condition's default lock is an RLock
                return None
            if self.journal is None:
                self._waiters.append((seq, fut))
        if self.journal is not None:
            self._journal_turn.append((seq, batch, fut))
        if not self._kick_pending:
            # once per event-loop turn, after every request handled in this turn has queued its row: they
            # share one journal write (or one commit)
            self._kick_pending = True
            loop.call_soon(self._kick)
        return fut

    def _kick(self) -> None:
        self._kick_pending = False
        if self.journal is None:
            with self._cond:
                self._cond.notify()
            return
        turn, self._journal_turn = self._journal_turn, []
        try:
            self.journal.append((seq, b) for seq, b, _ in turn)
        except OSError as exc:
            self.error = f"journal: {exc}"
            err = LogUnavailable(
                f"the prediction could not be written to the log's journal ({exc}) and is not acknowledged "
                "(LOG_DURABLE_ACK); it may or may not be logged later"
            )
            for _, _, fut in turn:
                if not fut.done():
                    fut.set_exception(err)
            return
        for _, b, fut in turn:
            self.journalled += b.n
            if not fut.done():
                fut.set_result(True)

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
        """Replay the journals of crashed predecessors, count the rows they lost (ledger), then start the
        writer thread."""
        replay: list[LogBatch] = []
        journalled: set[str] = set()
        if self.journal is not None:
            replay, journalled = self.journal.claim_dead()
        if self.ledger is not None:
            self.lost_on_crash += self.ledger.open(journalled)
            if self.journal is not None and self.ledger.path is not None:
                self.journal.stem = self.ledger.path.name[: -len(".ledger")]  # one name per process
        if self.journal is not None:
            entries: list[tuple[int, LogBatch]] = []
            with self._cond:
                for b in replay:  # not bounded by queue_max: a dead process's queue was bounded already
                    entries.append((self._batches_in, b))
                    self._chunks.append(b)
                    self._pending += b.n
                    self._accepted += b.n
                    self._batches_in += 1
                if self.ledger is not None and self._accepted > self.ledger.reserved:
                    self.ledger.reserve(self._accepted)
            self.journal.adopt(entries)
            if self.durable_ack:
                self.journal.open_segment()
            self.replayed = sum(b.n for b in replay)
            if replay:
                logger.warning(
                    "prediction log: %d records acknowledged by a process that died were replayed from its "
                    "journal into the database",
                    self.replayed,
                )
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
                    continue
            if not self._write_queued():
                return

    def _write_queued(self) -> bool:
        """Take up to ``batch_size`` records from the queue and write them, retrying while the database
        fails. False: the writer must end (shutdown timeout passed)."""
        with self._cond:
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
                if self.journal is not None and ok:
                    self.journal.trim(self._batches_done)
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
        for loop, futs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, futs, ok)
            except RuntimeError:  # the loop is closed: nobody waits any more
                continue

    def _drop_all(self, why: str) -> None:
        self._dropped_at_stop = True
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
        if self.journal is not None:
            # rows the database never took (it failed until the shutdown timeout) stay in the journal: the
            # next start replays them
            self.journal.close(remove=not self._dropped_at_stop)
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
            "replayed_on_start": self.replayed,
            "db_error": self.error,
            "url": self.store.safe_url(),
        }


def _resolve(futs: Any, ok: bool | None) -> None:
    """Set the result of the futures still waiting (on their event loop's thread)."""
    for fut in futs:
        if not fut.done():
            fut.set_result(ok)
