"""Moves accepted readings into the feature store and keeps the online store current, off the request path.

One worker thread owns the Feast ``FeatureStore`` (Feast is imported there, the first time work
arrives: inference starts without it). Jobs:

* push: pending journal readings -> ``features.store.push`` (history + online store), then marked pushed;
  woken by every accepted ``POST /readings`` batch (or every FEATURE_PUSH_INTERVAL seconds when set);
* materialize: ``features.store.materialize`` (history -> online store, incremental) every
  FEATURE_MATERIALIZE_INTERVAL seconds and on demand (``POST /features/materialize``).

Several processes on one feature store folder (uvicorn workers, replicas sharing the volume) each run
a Materializer over the same journal. Every job runs under the journal's work lock (``journal.FileLock``,
an ``flock``), so pending readings are read, pushed and marked pushed by one process at a time: each
reading is pushed once. The scheduled materialization runs only in the process holding the owner lock
(the first to take it; the others retry at every tick and take over when its process dies, since the
kernel then drops its lock). Any process still pushes what it accepted, at once, and polls for readings
left pending by a process that died (every PUSH_POLL_SECONDS).

What a scrape sees (``stats``): readings pending and the age of the oldest one (the lag between
acceptance and the online store), the last successful push and materialization, the last error, and
whether this process owns the schedule.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import groupby
from typing import Any

from .journal import OWNER_LOCK, WORK_LOCK, FileLock, ReadingJournal

logger = logging.getLogger(__name__)

PUSH_BATCH = 5000
PUSH_POLL_SECONDS = 5.0
LOCK_WAIT_SECONDS = 120.0  # a job waits this long for another process's job; then it is skipped (retried)


class Materializer:
    def __init__(
        self, settings: Any, journal: ReadingJournal, interval: float, push_interval: float = 0.0
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.interval = interval
        self.push_interval = push_interval  # 0: push as soon as readings are accepted
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="materializer")
        self._store: Any = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._push_pending: Future[int] | None = None
        self.last_push_at: float | None = None
        self.last_materialized_at: float | None = None
        self.last_error: str | None = None
        self.pushed = 0
        self.runs = {"ok": 0, "error": 0}
        folder = journal.path.parent
        self._work = FileLock(folder / WORK_LOCK)
        self._owner = FileLock(folder / OWNER_LOCK)

    # ------------------------------------------------------------ jobs (worker thread only)
    def _feast(self) -> Any:
        if self._store is None:
            from gradeflow_shared.features.store import feature_store

            t0 = time.perf_counter()
            self._store = feature_store(self.settings)
            logger.info("feature store opened for ingestion in %.1fs", time.perf_counter() - t0)
        return self._store

    def _push(self) -> int:
        import pandas as pd

        from gradeflow_shared.features.store import push

        total = 0
        while True:
            batch = self.journal.pending(PUSH_BATCH)
            if not batch:
                return total
            store = self._feast()
            # consecutive readings with the same features go together (a missing column would push NaN
            # over a stored value; the store carries absent features forward)
            for _, group in groupby(batch, key=lambda item: tuple(sorted(item[1]))):
                items = list(group)
                push(store, pd.DataFrame([r for _, r in items]))
                self.journal.mark_pushed([rid for rid, _ in items])
                total += len(items)
                self.pushed += len(items)
            self.last_push_at = time.time()

    def _exclusive(self, what: str) -> bool:
        """Take the work lock for a job (waiting for another process's job); False when it stayed busy."""
        if self._work.acquire(LOCK_WAIT_SECONDS, self._stop):
            return True
        logger.warning(
            "feature store %s skipped: another process held %s for %.0fs", what, WORK_LOCK, LOCK_WAIT_SECONDS
        )
        return False

    def _guarded_push(self) -> int:
        if not self._exclusive("push"):
            return 0
        try:
            n = self._push()
            self.last_error = None
            return n
        except Exception as exc:
            self.last_error = f"push: {exc.__class__.__name__}: {exc}"
            logger.exception("pushing readings into the feature store failed (they stay pending)")
            raise
        finally:
            self._work.release()

    def _materialize(self) -> dict[str, Any]:
        from gradeflow_shared.features.store import materialize

        t0 = time.perf_counter()
        if not self._exclusive("materialization"):
            raise TimeoutError(f"another process held {WORK_LOCK} for {LOCK_WAIT_SECONDS:.0f}s")
        try:
            materialize(self._feast())
        except Exception as exc:
            self.runs["error"] += 1
            self.last_error = f"materialize: {exc.__class__.__name__}: {exc}"
            logger.exception("materialization failed")
            raise
        finally:
            self._work.release()
        self.runs["ok"] += 1
        self.last_materialized_at = time.time()
        self.last_error = None
        return {"seconds": round(time.perf_counter() - t0, 3)}

    # ------------------------------------------------------------ callers
    def request_push(self) -> None:
        """Wake the worker (after readings were committed), unless pushes are batched (push_interval)."""
        if not self.push_interval:
            self._wake.set()

    def materialize_now(self) -> Future[dict[str, Any]]:
        """History -> online store, after the job in progress (pending readings have their own push job)."""
        return self._pool.submit(self._materialize)

    def push_now(self) -> Future[int]:
        """Pending readings -> the store now (whatever FEATURE_PUSH_INTERVAL says); their number."""
        return self._pool.submit(self._guarded_push)

    def _tick(self) -> None:
        next_materialize = time.monotonic() + self.interval if self.interval > 0 else float("inf")
        poll = self.push_interval or PUSH_POLL_SECONDS
        while not self._stop.is_set():
            self._wake.wait(max(0.0, min(poll, next_materialize - time.monotonic())))
            self._wake.clear()
            if self._stop.is_set():
                return
            if not self._owner.held and self._owner.try_acquire():
                logger.info("this process now runs the feature store's scheduled jobs (pid %d)", os.getpid())
            if time.monotonic() >= next_materialize:
                next_materialize = time.monotonic() + self.interval
                if self._owner.held:  # one process materializes on schedule; the others only push
                    self._pool.submit(self._materialize)
            elif (self._push_pending is None or self._push_pending.done()) and self.journal.stats()[
                "pending"
            ]:
                self._push_pending = self._pool.submit(self._guarded_push)

    def start(self) -> None:
        self._ticker = threading.Thread(target=self._tick, name="materializer-tick", daemon=True)
        self._ticker.start()
        self._wake.set()  # readings left pending by an earlier run go first

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._ticker is not None:
            self._ticker.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._owner.release()

    def stats(self) -> dict[str, Any]:
        j = self.journal.stats()
        oldest = j["oldest_pending_at"]
        return {
            **j,
            "lag_seconds": max(0.0, time.time() - oldest) if oldest else 0.0,
            "pushed": self.pushed,
            "last_push_at": self.last_push_at,
            "last_materialized_at": self.last_materialized_at,
            "materializations": dict(self.runs),
            "last_error": self.last_error,
            "owner": self._owner.held,
        }
