"""The prediction log against real databases: SQLite restart and PostgreSQL (postgres_url fixture)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from gradeflow_inference.predlog import PredictionLog
from gradeflow_shared.contracts import FeedbackItem


def _rows(n: int, version: int = 1) -> list[tuple]:
    now = time.time()
    return [
        (uuid.uuid4().hex, now, version, {"age": 17, "school_type": "public", "i": i}, float(i), 0.5)
        for i in range(n)
    ]


def _all(log: PredictionLog) -> list:
    out, since = [], None
    while True:
        page = log.page(since, None, 100, None)
        out += page.items
        since = page.next_since_id
        if since is None:
            return out


def roundtrip(url: str) -> None:
    log = PredictionLog(url, batch_size=50, flush_interval=0.05)
    log.start()
    rows = _rows(230)
    for i in range(0, 230, 23):
        assert log.submit(rows[i : i + 23])
    fb = log.add_feedback(
        [FeedbackItem(request_id=rows[7][0], actual=11.0), FeedbackItem(request_id="zz", actual=1)]
    )
    assert fb.accepted == 1 and fb.unknown_request_ids == ["zz"]
    log.stop()
    assert log.written == 230 and log.dropped == 0
    # a new process on the same database: migrations are idempotent, every row is there
    log2 = PredictionLog(url)
    log2.start()
    got = _all(log2)
    assert [g.request_id for g in got] == [r[0] for r in rows]
    assert got[5].features == {"age": 17, "school_type": "public", "i": 5}
    assert got[7].actual == 11.0 and got[7].feedback_at is not None
    labelled = log2.page(None, None, 100, True).items
    assert [x.request_id for x in labelled] == [rows[7][0]]
    # feedback for an id that is logged later still joins (stored in its own table)
    late = _rows(1)
    assert log2.add_feedback([FeedbackItem(request_id=late[0][0], actual=2.0)]).unknown_request_ids == [
        late[0][0]
    ]
    log2.submit(late)
    assert log2.page(got[-1].id, None, 10, True).items[0].actual == 2.0
    log2.stop()


def test_sqlite_wal_roundtrip(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'p.db'}"
    roundtrip(url)
    with sa.create_engine(url).connect() as c:
        assert c.execute(sa.text("pragma journal_mode")).scalar() == "wal"
        assert c.execute(sa.text("select version_num from alembic_version")).scalar() == "0001"


@pytest.mark.postgres
def test_postgres_roundtrip(postgres_url: str) -> None:
    roundtrip(postgres_url)


def test_duplicate_request_id_counted_not_blocking(tmp_path: Path) -> None:
    log = PredictionLog(f"sqlite:///{tmp_path / 'p.db'}", flush_interval=0.05)
    log.start()
    rows = _rows(5)
    log.submit(rows)
    assert log.flush(10)
    log.submit(rows[:1] + _rows(3))  # one id again: that row is dropped and counted, the others written
    assert log.flush(10)
    log.stop()
    assert (log.written, log.dropped) == (8, 1)
