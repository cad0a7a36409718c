"""The journal of accepted readings: nothing accepted is lost between ``POST /readings`` and the store.

A reading is answered 200 only once it is committed here (SQLite, WAL, FEATURE_STORE_DIR/readings.db).
The materializer pushes pending rows into the feature store (history + online store) and marks them
pushed; after a crash the rows still pending are pushed on the next start. A crash between the push and
the mark pushes a row twice (same student, time and values: the online value is the same and the point
in time join takes one of two identical history rows).

Several inference processes (uvicorn workers, replicas on one volume) share the journal. ``FileLock``
serialises their work on it: reading the pending rows, pushing them and marking them pushed happen
under one exclusive lock (``WORK_LOCK``), so each reading is pushed by one process only; the scheduled
materialization runs in the one process holding ``OWNER_LOCK``. Both are ``flock`` locks on files next
to the journal: the kernel releases them when their process dies, so a crashed owner's pending readings
and its schedule are taken over by a surviving process at its next tick.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

JOURNAL_FILE = "readings.db"
WORK_LOCK = "readings.work.lock"  # held while pending readings are pushed or the store is materialized
OWNER_LOCK = "readings.owner.lock"  # held for life by the process that runs the scheduled jobs

_SCHEMA = """
create table if not exists readings (
    id integer primary key autoincrement,
    accepted_at real not null,
    student_id text not null,
    event_timestamp text not null,
    features text not null,
    pushed_at real
);
create index if not exists readings_pending on readings (pushed_at, id);
"""


class ReadingJournal:
    """Accepted readings, pending until pushed (one connection, serialised by a lock: writes are short)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute("pragma journal_mode=wal")
        self._conn.execute("pragma synchronous=full")  # an answered reading survives a power cut
        self._conn.executescript(_SCHEMA)

    def add(self, readings: list[dict[str, Any]]) -> int:
        """Commit readings (``student_id``, ``event_timestamp`` ISO text, features...); their number."""
        now = time.time()
        rows = [
            (
                now,
                r["student_id"],
                r["event_timestamp"],
                json.dumps({k: v for k, v in r.items() if k not in ("student_id", "event_timestamp")}),
            )
            for r in readings
        ]
        with self._lock:
            self._conn.execute("begin immediate")
            try:
                self._conn.executemany(
                    "insert into readings (accepted_at, student_id, event_timestamp, features) values (?,?,?,?)",
                    rows,
                )
                self._conn.execute("commit")
            except BaseException:
                self._conn.execute("rollback")
                raise
        return len(rows)

    def pending(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """The oldest pending readings (id, reading) in the order they were accepted."""
        with self._lock:
            cur = self._conn.execute(
                "select id, student_id, event_timestamp, features from readings where pushed_at is null "
                "order by id limit ?",
                (limit,),
            )
            rows = cur.fetchall()
        return [
            (rid, {"student_id": sid, "event_timestamp": ts, **json.loads(feats)})
            for rid, sid, ts, feats in rows
        ]

    def mark_pushed(self, ids: list[int]) -> None:
        now = time.time()
        with self._lock:
            self._conn.execute("begin immediate")
            self._conn.executemany("update readings set pushed_at = ? where id = ?", [(now, i) for i in ids])
            self._conn.execute("commit")

    def stats(self) -> dict[str, Any]:
        """accepted, pending, and the accept time of the oldest pending reading (None when none is)."""
        with self._lock:
            accepted = self._conn.execute("select coalesce(max(id), 0) from readings").fetchone()[0]
            pending, oldest = self._conn.execute(
                "select count(*), min(accepted_at) from readings where pushed_at is null"
            ).fetchone()
        return {"accepted": accepted, "pending": pending, "oldest_pending_at": oldest}

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class FileLock:
    """An exclusive ``flock`` on a file, shared by every process that opens the same path.

    Released by ``release`` or, whatever happens to the process, by the kernel when it exits. Not
    reentrant: one holder per instance (each acquisition opens its own descriptor, so two instances in
    one process exclude each other too). Needs a local file system (a Docker volume is one; NFS is not
    trusted here).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free (never waits); True when this instance holds it."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a person looking
        self._fd = fd
        return True

    def acquire(self, timeout: float, stop: threading.Event | None = None, poll: float = 0.05) -> bool:
        """Wait up to ``timeout`` seconds for the lock (or until ``stop`` is set); True when taken."""
        deadline = time.monotonic() + timeout
        while not self.try_acquire():
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return False
            time.sleep(poll)
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
