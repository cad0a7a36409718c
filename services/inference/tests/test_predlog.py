"""The prediction log against real databases: SQLite restart and PostgreSQL (postgres_url fixture)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import sqlalchemy as sa

from gradeflow_inference.api.encode import predict_response
from gradeflow_inference.predlog.ids import new_batch_key, request_ids
from gradeflow_inference.predlog.store import LogBatch, LogStore
from gradeflow_inference.predlog.writer import LogWriter
from gradeflow_shared.contracts import FeedbackItem
from gradeflow_shared.errors import Conflict


def _log(url: str, **kw: float) -> LogWriter:
    return LogWriter(LogStore(url), **kw)  # type: ignore[arg-type]


def _batch(n: int, start: int = 0, version: int = 1) -> tuple[LogBatch, list[str]]:
    """One logged request of n records (as the API submits it) and its request ids."""
    recs = [{"age": 17, "school_type": "public", "i": start + i} for i in range(n)]
    key = new_batch_key()
    return LogBatch(
        key, time.time(), version, recs, [float(start + i) for i in range(n)], 0.5, n
    ), request_ids(key, n)


def _rows(n: int) -> list[tuple[LogBatch, list[str]]]:
    return [_batch(1, start=i) for i in range(n)]


def _all(log: LogWriter) -> list:
    out, since = [], None
    while True:
        page = log.flushed_store().page(since, None, 100, None)
        out += page.items
        since = page.next_since_id
        if since is None:
            return out


def roundtrip(url: str) -> None:
    log = _log(url, batch_size=50, flush_interval=0.05)
    log.start()
    ids: list[str] = []
    for i in range(0, 230, 23):  # 10 requests of 23 records
        b, rids = _batch(23, start=i)
        assert log.submit(b)
        ids += rids
    fb = log.flushed_store().add_feedback(
        [
            FeedbackItem(request_id=ids[7], actual=11.0),
            FeedbackItem(request_id=ids[30], actual=4.0),
            FeedbackItem(request_id="zz", actual=1),
            FeedbackItem(request_id=ids[22][:28] + "0017", actual=1),  # index 23 of a 23-record batch
        ]
    )
    assert fb.accepted == 2 and fb.unknown_request_ids == ["zz", ids[22][:28] + "0017"]
    log.stop()
    assert log.written == 230 and log.dropped == 0
    # a new process on the same database: migrations are idempotent, every row is there
    log2 = _log(url)
    log2.start()
    got = _all(log2)
    assert [g.request_id for g in got] == ids
    assert [g.id for g in got] == sorted({g.id for g in got})
    assert got[5].features == {"age": 17, "school_type": "public", "i": 5}
    assert got[40].prediction == 40.0 and got[40].model_version == 1
    assert got[7].actual == 11.0 and got[7].feedback_at is not None
    labelled = log2.flushed_store().page(None, None, 100, True).items
    assert [(x.request_id, x.actual, x.features["i"]) for x in labelled] == [
        (ids[7], 11.0, 7),
        (ids[30], 4.0, 30),
    ]
    assert [x.request_id for x in log2.flushed_store().page(labelled[0].id, None, 100, True).items] == [
        ids[30]
    ]
    unlabelled = log2.flushed_store().page(None, None, 1000, False).items
    assert len(unlabelled) == 228 and ids[7] not in {x.request_id for x in unlabelled}
    # paging from the middle of a batch, and by time
    assert [x.request_id for x in log2.flushed_store().page(got[24].id, None, 3, None).items] == ids[25:28]
    assert log2.flushed_store().page(None, got[100].ts, 1, None).items[0].id <= got[100].id
    # feedback for an id that is not logged is reported and not stored: it does not join later
    late, late_ids = _batch(1, start=999)
    fb = log2.flushed_store().add_feedback([FeedbackItem(request_id=late_ids[0], actual=2.0)])
    assert (fb.accepted, fb.unknown_request_ids) == (0, late_ids)
    log2.submit(late)
    assert log2.flushed_store().page(got[-1].id, None, 10, True).items == []
    # a second label: refused (409, nothing stored) unless overwrite, which keeps the earlier value
    with pytest.raises(Conflict) as ei:
        log2.flushed_store().add_feedback(
            [FeedbackItem(request_id=late_ids[0], actual=3.0), FeedbackItem(request_id=ids[7], actual=12.0)]
        )
    assert ei.value.details["request_ids"] == [ids[7]] and ids[7] in ei.value.message
    assert log2.flushed_store().page(got[-1].id, None, 10, True).items == []  # late_ids[0] not stored
    fb = log2.flushed_store().add_feedback([FeedbackItem(request_id=ids[7], actual=12.0)], overwrite=True)
    assert (fb.accepted, fb.overwritten_request_ids) == (1, [ids[7]])
    assert log2.flushed_store().page(got[6].id, None, 1, True).items[0].actual == 12.0
    with log2.store.require().connect() as c:
        audit = c.execute(sa.text("select request_id, old_actual, new_actual from feedback_audit")).all()
    assert [tuple(a) for a in audit] == [(ids[7], 11.0, 12.0)]
    log2.stop()


def test_sqlite_wal_roundtrip(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'p.db'}"
    roundtrip(url)
    with sa.create_engine(url).connect() as c:
        assert c.execute(sa.text("pragma journal_mode")).scalar() == "wal"
        assert c.execute(sa.text("select version_num from alembic_version")).scalar() == "0004"


@pytest.mark.postgres
def test_postgres_roundtrip(postgres_url: str) -> None:
    roundtrip(postgres_url)


def test_duplicate_request_id_counted_not_blocking(tmp_path: Path) -> None:
    log = _log(f"sqlite:///{tmp_path / 'p.db'}", flush_interval=0.05)
    log.start()
    first, _ = _batch(5)
    log.submit(first)
    assert log.flush(10)
    log.submit(first)  # the same batch key again: its 5 records are dropped and counted, the others written
    for b, _ in _rows(3):
        log.submit(b)
    assert log.flush(10)
    log.stop()
    assert (log.written, log.dropped) == (8, 5)


def test_migration_from_per_record_rows(tmp_path: Path) -> None:
    """A database written by revision 0001 (one row per record) upgrades to 0002 and reads the same."""
    from alembic import command
    from alembic.config import Config

    from gradeflow_inference.db import MIGRATIONS

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        old = [
            (f"{i:012x}" + "ab" * 10, f'{{"age": {15 + i}, "school_type": "public"}}', 10.0 + i)
            for i in range(3)
        ]
        old.append(("legacy-id", '{"age": 20, "school_type": null}', 3.5))
        for rid, feats, pred in old:
            conn.execute(
                sa.text(
                    "insert into predictions (request_id, ts, model_version, features, prediction, latency_ms) "
                    "values (:r, '2026-11-01 10:00:00.000000', 7, :f, :p, 1.5)"
                ),
                {"r": rid, "f": feats, "p": pred},
            )
        conn.execute(
            sa.text("insert into feedback values (:r, 12.0, '2026-11-02 10:00:00.000000')"), {"r": old[2][0]}
        )
    engine.dispose()
    log = _log(url)
    log.start()
    got = _all(log)
    assert [(g.request_id, g.prediction, g.model_version, g.features["age"]) for g in got] == [
        (rid, pred, 7, 15 + i if i < 3 else 20) for i, (rid, _, pred) in enumerate(old)
    ]
    assert [(x.request_id, x.actual) for x in log.flushed_store().page(None, None, 10, True).items] == [
        (old[2][0], 12.0)
    ]
    fb = log.flushed_store().add_feedback([FeedbackItem(request_id="legacy-id", actual=1.0)])
    assert (
        fb.accepted == 1
        and log.flushed_store().page(got[2].id, None, 10, True).items[0].request_id == "legacy-id"
    )
    log.stop()
    with sa.create_engine(url).connect() as c:
        assert "predictions" not in sa.inspect(c).get_table_names()


@pytest.mark.parametrize("n", [1, 2, 17, 1000, 10_000])
def test_predict_response_is_the_plain_json_encoding(n: int) -> None:
    """The loop-free /predict body is byte for byte the dict encoding (ids from request_ids)."""
    key = new_batch_key()
    preds = [((i * 7919) % 1000) / 37.0 - 3.0 for i in range(n)]
    if n == 17:
        preds[3] = float("nan")  # encoded as null, as orjson does
    expected = orjson.dumps(
        {
            "model_version": 12,
            "predictions": [
                {"request_id": r, "prediction": p} for r, p in zip(request_ids(key, n), preds, strict=True)
            ],
        }
    )
    assert predict_response(12, key, preds) == expected
    assert predict_response(12, key, np.asarray(preds)) == expected
    with pytest.raises(ValueError):
        predict_response(12, key, [])
