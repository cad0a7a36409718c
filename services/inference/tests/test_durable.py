"""Durable acknowledgement (group commit) and the crash ledger that counts rows a killed process lost."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gradeflow_inference.app import create_app
from gradeflow_inference.predlog import ledger as ld
from gradeflow_inference.predlog.store import LogBatch, LogStore, LogUnavailable
from gradeflow_inference.predlog.writer import INLINE_WINDOW, LogWriter
from gradeflow_testkit import exports

from .test_predlog import _batch

SLOW = {"flush_interval": 60.0, "batch_size": 100_000}  # without a durable ack, rows would wait 60 s


def _db_keys(db: Path) -> set[str]:
    """Batch keys committed to the SQLite file, read through a connection of its own."""
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("select batch_key from prediction_batches")}
    finally:
        con.close()


def _spy(store: LogStore, before: Callable[[str], None] | None = None) -> list[tuple[str, str]]:
    """Record (method, thread) of every write; ``before(method)`` runs first (a fault, a delay)."""
    import threading

    calls: list[tuple[str, str]] = []
    for name in ("write", "write_here"):
        real = getattr(store, name)

        def spy(*a: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append((_name, threading.current_thread().name))
            if before is not None:
                before(_name)
            return _real(*a)

        setattr(store, name, spy)
    return calls


def test_durable_ack_over_http_answers_after_commit(
    tmp_path: Path, model_dir: Path, fitted: exports.Fitted, make_settings: Callable[..., Any]
) -> None:
    db = tmp_path / "log.db"
    cfg = make_settings(
        model_dir,
        log_durable_ack=True,
        log_flush_interval=60,
        log_batch_size=100_000,
        prediction_db_url=f"sqlite:///{db}",
    )
    with TestClient(create_app(cfg)) as c:
        for rec in fitted.records[:5]:
            r = c.post("/predict", json=rec)
            assert r.status_code == 200
            key = r.json()["predictions"][0]["request_id"][:28]
            assert key in _db_keys(db)  # committed before the answer left


def test_group_commit_releases_every_waiter(tmp_path: Path) -> None:
    store = LogStore(f"sqlite:///{tmp_path / 'g.db'}")
    log = LogWriter(store, **SLOW)  # type: ignore[arg-type]
    log.start()
    assert store.ready.wait(30)
    calls = _spy(store)
    batches = [_batch(1, start=i)[0] for i in range(64)]

    async def main() -> None:
        await asyncio.gather(*(log.acked(b) for b in batches))

    asyncio.run(main())
    assert _db_keys(tmp_path / "g.db") == {b.batch_key for b in batches}
    assert 1 <= len(calls) < 64, calls  # grouped, not one commit per request
    log.stop()


def _started(store: LogStore, **kw: Any) -> LogWriter:
    log = LogWriter(store, **{**SLOW, **kw})
    log.start()
    assert store.ready.wait(30)
    return log


def _acked_one_by_one(log: LogWriter, batches: list[LogBatch]) -> None:
    async def main() -> None:
        for b in batches:  # one request per event-loop turn: where a thread hand-over costs most
            await log.acked(b)

    asyncio.run(main())


def test_sqlite_commits_on_the_event_loop_without_a_thread_hand_over(tmp_path: Path) -> None:
    store = LogStore(f"sqlite:///{tmp_path / 'i.db'}")
    calls = _spy(store)
    log = _started(store)
    batches = [_batch(1, start=i)[0] for i in range(20)]
    _acked_one_by_one(log, batches)
    assert _db_keys(tmp_path / "i.db") == {b.batch_key for b in batches}
    assert log.inline_commits == 20 and set(calls) == {("write_here", "MainThread")}, calls
    log.stop()


def test_the_writer_thread_checkpoints_the_wal_of_inline_commits(tmp_path: Path) -> None:
    import threading
    import time

    store = LogStore(f"sqlite:///{tmp_path / 'w.db'}")
    log = _started(store, flush_interval=0.05)
    done: list[str] = []
    real = store.checkpoint

    def spy() -> None:
        done.append(threading.current_thread().name)
        real()

    store.checkpoint = spy  # type: ignore[method-assign]
    _acked_one_by_one(log, [_batch(1, start=i)[0] for i in range(5)])
    deadline = time.monotonic() + 5
    while not done and time.monotonic() < deadline:
        time.sleep(0.02)
    assert done and set(done) == {"prediction-log-writer"}, done
    n = len(done)
    time.sleep(0.3)  # idle, nothing new committed: no further checkpoints
    assert len(done) == n
    con = sqlite3.connect(tmp_path / "w.db")
    assert con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0  # not busy
    con.close()
    log.stop()


def test_a_slow_disk_moves_commits_back_to_the_writer_thread(tmp_path: Path) -> None:
    import time

    store = LogStore(f"sqlite:///{tmp_path / 's.db'}")
    calls = _spy(store, lambda _m: time.sleep(0.02))  # 20 ms a commit: the event loop must not keep paying it
    log = _started(store, inline_max_seconds=0.005)
    batches = [_batch(1, start=i)[0] for i in range(INLINE_WINDOW + 6)]
    _acked_one_by_one(log, batches)
    assert _db_keys(tmp_path / "s.db") == {b.batch_key for b in batches}
    assert calls[:INLINE_WINDOW] == [("write_here", "MainThread")] * INLINE_WINDOW, calls
    assert set(calls[INLINE_WINDOW:]) == {("write", "prediction-log-writer")}, calls
    log.stop()


def test_an_inline_commit_that_fails_hands_its_rows_to_the_writer_thread(tmp_path: Path) -> None:
    store = LogStore(f"sqlite:///{tmp_path / 'f.db'}")

    def fail(method: str) -> None:
        if method == "write_here":
            raise sqlite3.OperationalError("disk I/O error")

    calls = _spy(store, fail)
    log = _started(store)
    batches = [_batch(1, start=i)[0] for i in range(3)]

    async def main() -> None:
        await asyncio.gather(*(log.acked(b) for b in batches))

    asyncio.run(main())
    assert ("write", "prediction-log-writer") in calls
    assert _db_keys(tmp_path / "f.db") == {b.batch_key for b in batches}
    assert log.written == 3 and log.dropped == 0
    log.stop()


def test_an_inline_commit_does_not_wait_on_the_loop_for_another_writers_lock(tmp_path: Path) -> None:
    import threading
    import time

    db = tmp_path / "l.db"
    log = _started(LogStore(f"sqlite:///{db}"))
    other = sqlite3.connect(db, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # e.g. a /feedback write holding SQLite's write lock for 0.6 s
    threading.Timer(0.6, other.commit).start()
    b = _batch(1)[0]
    gaps: list[float] = []

    async def ticker(done: asyncio.Event) -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def main() -> None:
        done = asyncio.Event()
        tick = asyncio.create_task(ticker(done))
        await asyncio.sleep(0.05)
        await log.acked(b)  # committed by the writer thread once the lock is free
        done.set()
        await tick

    asyncio.run(main())
    other.close()
    assert b.batch_key in _db_keys(db)
    assert max(gaps) < 0.3, max(gaps)  # the loop kept serving: it never sat in SQLite's busy wait
    log.stop()


def test_durable_ack_refuses_when_the_row_cannot_be_queued(tmp_path: Path) -> None:
    log = LogWriter(LogStore(f"sqlite:///{tmp_path / 'q.db'}"), queue_max=1, **SLOW)  # type: ignore[arg-type]

    async def main() -> None:
        with pytest.raises(LogUnavailable, match="not acknowledged"):
            await log.acked(_batch(2)[0])

    asyncio.run(main())
    assert log.dropped == 2


def _crash(log: LogWriter) -> None:
    """What a SIGKILL leaves: the ledger file with its counters, its lock released, nothing removed."""
    assert log.ledger is not None and log.ledger._fd is not None
    os.close(log.ledger._fd)
    log.ledger._fd = None


def test_lost_rows_counted_after_a_crash(tmp_path: Path) -> None:
    led = tmp_path / "ledger"
    log = LogWriter(LogStore(f"sqlite:///{tmp_path / 'a.db'}"), ledger_dir=led, **SLOW)  # type: ignore[arg-type]
    log.start()
    assert log.lost_on_crash == 0
    for i in range(10):
        assert log.submit(_batch(3, start=i)[0])  # 30 records acknowledged, all still queued
    assert log.flush(timeout=30)  # committed: the ledger's "done" follows
    for i in range(5):
        assert log.submit(_batch(2, start=i)[0])  # 10 more, never written
    _crash(log)
    again = LogWriter(LogStore(f"sqlite:///{tmp_path / 'a.db'}"), ledger_dir=led, **SLOW)  # type: ignore[arg-type]
    again.start()
    # at least the 10 lost ones; at most those plus the unused rest of the reserved block
    assert 10 <= again.lost_on_crash < 10 + ld.BLOCK
    assert len(list(led.glob("*.ledger"))) == 1  # the dead process's ledger is claimed and removed
    again.stop()
    assert list(led.glob("*.ledger")) == []  # a clean stop leaves nothing to count
    third = LogWriter(LogStore(f"sqlite:///{tmp_path / 'a.db'}"), ledger_dir=led)  # type: ignore[arg-type]
    third.start()
    assert third.lost_on_crash == 0
    third.stop()


def test_a_live_process_ledger_is_not_claimed(tmp_path: Path) -> None:
    led = tmp_path / "ledger"
    one = LogWriter(LogStore(f"sqlite:///{tmp_path / 'b.db'}"), ledger_dir=led, **SLOW)  # type: ignore[arg-type]
    one.start()
    assert one.submit(_batch(4)[0])
    two = LogWriter(LogStore(f"sqlite:///{tmp_path / 'c.db'}"), ledger_dir=led)  # type: ignore[arg-type]
    two.start()
    assert two.lost_on_crash == 0
    two.stop()
    one.stop()


def test_lost_count_on_health_and_metrics(
    tmp_path: Path, model_dir: Path, make_settings: Callable[..., Any]
) -> None:
    cfg = make_settings(model_dir)
    led = cfg.service_dir("inference") / "log-ledger"
    led.mkdir(parents=True)
    (led / f"12345-1{ld.SUFFIX}").write_bytes(b"%020d\n%020d\n" % (100, 40))  # a dead process's ledger
    with TestClient(create_app(cfg)) as c:
        assert c.get("/health").json()["log_lost_on_crash"] == 60
        assert "inference_log_lost_on_crash_total 60.0" in c.get("/metrics").text


def test_writers_starting_together_migrate_one_at_a_time(tmp_path: Path) -> None:
    """Alembic binds its ``op`` proxy per run: concurrent upgrades in one process must not share it."""
    import threading

    stores = [LogStore(f"sqlite:///{tmp_path / f'm{i}.db'}") for i in range(6)]
    errors: list[BaseException] = []

    def open_one(store: LogStore) -> None:
        try:
            store.open()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for i, store in enumerate(stores):
        assert store.ready.is_set()
        con = sqlite3.connect(tmp_path / f"m{i}.db")
        try:
            assert con.execute("select version_num from alembic_version").fetchall() == [("0004",)]
            assert con.execute("select count(*) from prediction_batches").fetchone() == (0,)
        finally:
            con.close()
        store.close()
