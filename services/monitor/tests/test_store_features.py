"""Drift checks on features that came from the feature store (real store, real Evidently, real HTTP).

The contract with inference: a prediction by student id logs, in ``LoggedPrediction.features``,
the values it actually used (the store's online values, overridden by any sent in the request).
Here the prediction log (``FakeInference``, the contract over HTTP) is filled exactly that way
from a real parquet + SQLite store, and the model's reference is the store's point-in-time
training set. The monitor must find no drift while the store serves what the model was trained
on, and must flag attendance once new readings with lower attendance arrive through the store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi.testclient import TestClient

from gradeflow_monitor.app import create_app
from gradeflow_shared.features import store as fs
from gradeflow_shared.features.seed import seed, training_frame
from gradeflow_shared.settings import FeatureStoreSettings
from gradeflow_shared.synth import TARGET, timeline_spec
from gradeflow_testkit.monitor_peers import monitor_settings

STUDENTS = 1200


def test_monitor_sees_the_store_values_used_for_predictions(
    tmp_path: Path, fake_inference: Any, fake_trainer: Any
) -> None:
    from gradeflow_trainer import export as tx
    from gradeflow_trainer.pipeline import build_pipeline, evaluate

    (inf, inf_srv), (_, tr_srv) = fake_inference, fake_trainer
    spec = timeline_spec(students=STUDENTS, seed=5)
    columns = spec.columns or []
    names = [c.name for c in columns]
    store = fs.feature_store(FeatureStoreSettings(feature_store_dir=tmp_path / "fs"))
    hist = seed(store, spec)
    X, y = training_frame(store, hist, names)
    pipe = build_pipeline(columns, "ridge", {"alpha": 1.0})
    pipe.fit(X, y)
    model_dir = tmp_path / "models"
    tx.export_model(
        model_dir,
        pipe,
        columns,
        X,
        y,
        target=TARGET,
        model_name="student-grade",
        version=1,
        run_id="r1",
        metrics=evaluate(pipe, X, y),
        reference_rows=1000,
    )
    ids = hist.labels["student_id"].iloc[:600].tolist()

    def predict_by_id() -> pd.DataFrame:
        """What the serving side does for a batch of ids: online values -> prediction -> log them."""
        used = fs.online_features(store, ids, names)[names]
        inf.log(used.assign(**{TARGET: pipe.predict(used)}), version=1, labelled=0.0)
        return used

    s = monitor_settings(tmp_path, model_dir, inf_srv.url, tr_srv.url, min_window_rows=100, window_size=600)
    with TestClient(create_app(s)) as c:
        used = predict_by_id()
        v = c.post("/checks").json()
        assert v["rows"] == 600 and "attendance_pct" not in v["drifted_columns"], v
        # the monitor's window holds exactly the values the store served
        logged = pd.DataFrame([r.features for r in inf.rows[-600:]])[names]
        pd.testing.assert_frame_equal(
            logged.reset_index(drop=True), used.reset_index(drop=True), check_dtype=False
        )

        # new readings arrive through the store: attendance falls by 30 points for these students
        now = pd.Timestamp(datetime.now(UTC))
        low = used[["attendance_pct"]].clip(lower=30.0) - 30.0
        fs.push(
            store,
            pd.DataFrame(
                {"student_id": ids, "event_timestamp": now, "attendance_pct": low["attendance_pct"]}
            ),
        )
        after = predict_by_id()
        assert (after["attendance_pct"] == low["attendance_pct"].to_numpy()).all()
        assert (after["term_grade"] == used["term_grade"]).all()  # carried forward, not lost
        v = c.post("/checks").json()
        assert "attendance_pct" in v["drifted_columns"] and "term_grade" not in v["drifted_columns"], v
