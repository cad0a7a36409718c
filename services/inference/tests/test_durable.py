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
from gradeflow_inference.predlog import journal as jn
from gradeflow_inference.predlog import ledger as ld
from gradeflow_inference.predlog.store import LogBatch, LogStore, LogUnavailable
from gradeflow_inference.predlog.writer import LogWriter
from gradeflow_testkit import exports

from .test_predlog import _batch

SLOW = {"flush_interval": 60.0, "batch_size": 100_000}  # without a durable ack, rows would wait 60 s


def _db_keys(db: Path) -> set[str]:
    """Batch keys committed to the SQLite file, read through a connection of its own."""
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("select batch_key from prediction_batches")}
    except sqlite3.OperationalError:  # not migrated yet: nothing committed
        return set()
    finally:
        con.close()


def _spy(store: LogStore, before: Callable[[str], None] | None = None) -> list[tuple[str, str]]:
    """Record (method, thread) of every write; ``before(method)`` runs first (a fault, a delay)."""
    import threading

    calls: list[tuple[str, str]] = []
    for name in ("write",):
        real = getattr(store, name)

        def spy(*a: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append((_name, threading.current_thread().name))
            if before is not None:
                before(_name)
            return _real(*a)

        setattr(store, name, spy)
    return calls


def test_durable_ack_over_http_answers_once_the_row_is_on_the_volume(
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
            # on the volume before the answer left: in the journal (the database takes it within 60 s)
            assert key in _journal_keys(cfg.service_dir("inference") / "log-ledger") | _db_keys(db)


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


def _journal_keys(folder: Path) -> set[str]:
    """Batch keys in the journal files of ``folder`` (complete lines only)."""
    keys: set[str] = set()
    for path in folder.glob(f"*{jn.SUFFIX}"):
        for line in path.read_bytes().split(b"\n")[:-1]:
            keys.add(jn.decode(line).batch_key)
    return keys


def test_acknowledged_rows_are_journalled_in_one_write_per_turn_without_a_commit(tmp_path: Path) -> None:
    led = tmp_path / "ledger"
    store = LogStore(f"sqlite:///{tmp_path / 'j.db'}")
    calls = _spy(store)
    log = _started(store, durable_ack=True, ledger_dir=led)
    assert log.journal is not None
    batches = [_batch(1, start=i)[0] for i in range(20)]
    _acked_one_by_one(log, batches)  # one request per turn: a write each
    assert log.journal.appended == 20
    together = [_batch(1, start=100 + i)[0] for i in range(30)]

    async def main() -> None:
        await asyncio.gather(*(log.acked(b) for b in together))

    asyncio.run(main())
    assert log.journal.appended == 21  # 30 requests of one turn: one write
    # answered with no database write at all (flush interval 60 s): the rows are in the journal
    assert calls == [] and _db_keys(tmp_path / "j.db") == set()
    assert _journal_keys(led) == {b.batch_key for b in batches + together}
    assert log.flush(timeout=30)
    assert _db_keys(tmp_path / "j.db") == {b.batch_key for b in batches + together}
    log.stop()
    assert list(led.glob(f"*{jn.SUFFIX}")) == []  # a clean stop with everything committed leaves none


def test_a_crashed_process_journal_is_replayed_into_the_database(tmp_path: Path) -> None:
    led = tmp_path / "ledger"
    db = tmp_path / "r.db"
    log = _started(LogStore(f"sqlite:///{db}"), durable_ack=True, ledger_dir=led)
    committed = [_batch(2, start=i)[0] for i in range(3)]
    _acked_one_by_one(log, committed)
    assert log.flush(timeout=30)  # these are in the database and still in the journal segment
    acked = [_batch(1, start=10 + i)[0] for i in range(7)]
    _acked_one_by_one(log, acked)  # answered, never committed (flush interval 60 s)
    assert not (_db_keys(db) & {b.batch_key for b in acked})
    # what a SIGKILL leaves: files and counters as they are, the locks released
    assert log.ledger is not None and log.ledger._fd is not None and log.journal is not None
    os.close(log.ledger._fd)
    log.ledger._fd = None
    for seg in log.journal._segments:
        os.close(seg.fd)
    log.journal._segments = []
    with (led / "99-1-0.acked").open("wb") as f:  # a dead process's torn last write: never acknowledged
        f.write(jn.encode(_batch(1, start=50)[0]) + b'["torn')
    again = _started(LogStore(f"sqlite:///{db}"), durable_ack=True, ledger_dir=led)
    assert again.replayed == 6 + 7 + 1
    assert again.lost_on_crash == 0  # the journal gave back what the ledger counted as outstanding
    assert again.flush(timeout=30)
    keys = _db_keys(db)
    assert {b.batch_key for b in committed + acked} <= keys and len(keys) == 3 + 7 + 1
    assert again.dropped == 0  # the rows the database already had are not counted as duplicates
    again.stop()
    assert list(led.glob(f"*{jn.SUFFIX}")) == [] and list(led.glob("*.ledger")) == []


def test_a_live_process_journal_is_not_claimed(tmp_path: Path) -> None:
    led = tmp_path / "ledger"
    one = _started(LogStore(f"sqlite:///{tmp_path / 'a.db'}"), durable_ack=True, ledger_dir=led)
    _acked_one_by_one(one, [_batch(1)[0]])
    two = _started(LogStore(f"sqlite:///{tmp_path / 'b.db'}"), ledger_dir=led)
    assert two.replayed == 0
    two.stop()
    assert one.journal is not None and all(p.exists() for p in one.journal.files())
    one.stop()


def test_journal_segments_rotate_and_committed_ones_are_removed(tmp_path: Path) -> None:
    led = tmp_path / "ledger"
    log = _started(
        LogStore(f"sqlite:///{tmp_path / 's.db'}"), durable_ack=True, ledger_dir=led, flush_interval=0.02
    )
    assert log.journal is not None
    log.journal.segment_bytes = 2000  # a few requests per segment
    _acked_one_by_one(log, [_batch(3, start=i)[0] for i in range(60)])
    assert log.flush(timeout=30)
    log.journal.trim(log._batches_done)
    assert log.journal._count > 5  # it rotated
    assert len(list(led.glob(f"*{jn.SUFFIX}"))) == 1  # only the current segment is left
    log.stop()


def test_a_journal_that_cannot_be_written_refuses_the_answer(tmp_path: Path) -> None:
    led = tmp_path / "ledger"
    log = _started(LogStore(f"sqlite:///{tmp_path / 'd.db'}"), durable_ack=True, ledger_dir=led)
    assert log.journal is not None

    def full(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    log.journal.append = full  # type: ignore[method-assign]

    async def main() -> None:
        with pytest.raises(LogUnavailable, match="No space left on device"):
            await log.acked(_batch(1)[0])

    asyncio.run(main())
    log.stop()


def test_durable_ack_stop_keeps_the_journal_of_rows_the_database_never_took(tmp_path: Path) -> None:
    led = tmp_path / "ledger"
    db = tmp_path / "k.db"
    store = LogStore(f"sqlite:///{db}")
    log = _started(store, durable_ack=True, ledger_dir=led, shutdown_timeout=0.5)
    b = _batch(2)[0]
    _acked_one_by_one(log, [b])

    def down(*_: Any) -> int:
        raise sqlite3.OperationalError("database is locked")

    store.write = down  # type: ignore[method-assign]
    log.stop()  # gives up after the shutdown timeout: the rows are dropped here, kept in the journal
    assert b.batch_key in _journal_keys(led)
    again = _started(LogStore(f"sqlite:///{db}"), durable_ack=True, ledger_dir=led)
    assert again.replayed == 2 and again.flush(timeout=30)
    assert b.batch_key in _db_keys(db)
    again.stop()


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
