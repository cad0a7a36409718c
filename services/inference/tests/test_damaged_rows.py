"""A damaged row in the prediction log (a blob cut short or unreadable, e.g. edited by hand or restored from
a broken backup) is left out of reads with a warning: never a 500 for the rows around it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from gradeflow_inference.app import create_app
from gradeflow_testkit import exports

from .conftest import LABELLER


def test_reads_and_feedback_skip_a_damaged_row(
    tmp_path: Path, model_dir: Path, fitted: exports.Fitted, make_settings: Callable[..., Any]
) -> None:
    db = tmp_path / "log.db"
    cfg = make_settings(model_dir, prediction_db_url=f"sqlite:///{db}")
    with TestClient(create_app(cfg)) as c:
        ids = []
        for i in range(3):
            r = c.post("/predict", json={"records": fitted.records[i : i + 2]})
            assert r.status_code == 200
            ids.append([p["request_id"] for p in r.json()["predictions"]])
        label = [{"request_id": rid, "actual": 12.0} for batch in ids for rid in batch]
        assert c.post("/feedback", json={"items": label}, headers=LABELLER).status_code == 200
        assert len(c.get("/predictions").json()["items"]) == 6  # flushes the log before the damage
        con = sqlite3.connect(db)
        keys = [k for (k,) in con.execute("select batch_key from prediction_batches order by id")]
        con.execute("update prediction_batches set predictions = '[1.5]' where batch_key = ?", (keys[0],))
        con.execute("update prediction_batches set records = '{not json' where batch_key = ?", (keys[1],))
        con.commit()
        con.close()
        for q in ("", "?labelled=true", "?labelled=false"):
            r = c.get(f"/predictions{q}")
            assert r.status_code == 200, (q, r.text)
        items = c.get("/predictions?labelled=true").json()["items"]
        assert [it["request_id"] for it in items] == ids[2]  # the intact batch only
        # labelling a damaged prediction again: a clear answer, not a 500
        r = c.post(
            "/feedback",
            json={"items": [{"request_id": ids[0][1], "actual": 11.0}], "overwrite": True},
            headers=LABELLER,
        )
        assert r.status_code < 500, r.text
