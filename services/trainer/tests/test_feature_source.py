"""FEATURE_SOURCE=feast: training rows from the real feature store (parquet + SQLite), point-in-time.

The proof that a reading dated after a label time never reaches a training row: after the first
training set is built, readings with impossible-looking values are pushed for some students,
dated one day after their label time. The next training set must be identical, and must equal an
independent as-of join of the generated history; a naive join (each student's latest reading)
would pick the new values, which the test checks too, so it can fail.
"""

from __future__ import annotations

import functools
import json
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from gradeflow_shared.contracts import RetrainRequest
from gradeflow_shared.features import store as fs
from gradeflow_shared.features.seed import store_spec
from gradeflow_shared.synth import ACTIVITY_COLUMNS, generate_term
from gradeflow_trainer import pipeline as P
from gradeflow_trainer import service
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.feature_source import store_training_set
from gradeflow_trainer.registry import InMemoryRegistry

from .conftest import unit_settings

LATE = {"term_grade": 0.5, "attendance_pct": 3.0, "study_hours_per_week": 39.5}


@pytest.fixture
def settings(tmp_path: Path) -> TrainerSettings:
    return unit_settings(tmp_path, rows=300, feature_source="feast")


def test_a_reading_dated_after_the_label_time_never_reaches_a_training_row(settings: TrainerSettings) -> None:
    first = store_training_set(settings)
    assert first.spec.name == "synthetic-term" and len(first.X) == 300
    assert not first.X.isna().any().any()  # every label found its features at its label time

    store = fs.feature_store(settings)
    labels = store_training_set(settings)  # the same history is recalled, not written again
    pd.testing.assert_frame_equal(labels.X, first.X)

    hist = generate_term(300, seed=0, start=_term_start(store))
    late_ids = hist.labels["student_id"].iloc[:20].tolist()
    label_time = hist.labels["event_timestamp"].iloc[0]
    late = pd.DataFrame({"student_id": late_ids, "event_timestamp": label_time + timedelta(days=1), **LATE})
    fs.push(store, late)
    # the readings did arrive: the online store now serves them
    online = fs.online_features(store, late_ids, list(LATE))
    assert (online["term_grade"] == LATE["term_grade"]).all()

    second = store_training_set(settings)
    pd.testing.assert_frame_equal(second.X, first.X)
    pd.testing.assert_series_equal(second.y, first.y)
    for col, value in LATE.items():
        assert not (second.X[col] == value).any(), col

    # an independent as-of join of the generated history gives exactly the training rows
    expected = _as_of(hist.activity, hist.labels)
    got = second.X[ACTIVITY_COLUMNS].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    # ... while a naive join (each student's latest reading in the store) would have used the late ones
    naive = pd.concat([hist.activity, late]).sort_values("event_timestamp").groupby("student_id").last()
    assert (naive.loc[late_ids, "term_grade"] == LATE["term_grade"]).all()


def _term_start(store) -> pd.Timestamp:
    """The start of the term the store was seeded with (its recorded anchor, as ``seed`` dates it)."""
    from gradeflow_shared.features.seed import _records, spec_key
    from gradeflow_shared.synth import LABEL_DELAY, TERM_WEEKS, timeline_spec

    anchor = pd.Timestamp(_records(store)[spec_key(timeline_spec(students=300, seed=0))])
    return (anchor - pd.Timedelta(weeks=TERM_WEEKS) - pd.Timedelta(LABEL_DELAY)).to_pydatetime()


def _as_of(activity: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Each label row's latest activity reading at or before its label time (pandas merge_asof)."""
    left = labels.reset_index().sort_values("event_timestamp")
    right = activity.sort_values("event_timestamp")
    left["event_timestamp"] = left["event_timestamp"].astype("datetime64[ns, UTC]")
    right["event_timestamp"] = right["event_timestamp"].astype("datetime64[ns, UTC]")
    joined = pd.merge_asof(left, right, on="event_timestamp", by="student_id", direction="backward")
    return joined.sort_values("index")[ACTIVITY_COLUMNS].reset_index(drop=True)


def test_the_run_logs_the_feature_views_and_their_versions(
    settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        service, "fit", functools.partial(P.fit, candidates=[("gbr", {"n_estimators": 40, "max_depth": 3})])
    )
    reg = InMemoryRegistry()
    result = service.train_once(settings, RetrainRequest(reason="unit"), registry=reg)
    assert result.version == 1
    run = reg.runs[result.run_id]
    params = run.record.params
    lineage = json.loads(run.artifacts["feature_views.json"])
    assert params["feature_source"] == "feast" and params["dataset"] == "synthetic-term"
    assert set(lineage["views"]) == {"student_profile", "student_activity"}
    for name, view in lineage["views"].items():
        assert params[f"feature_view.{name}.version"] == view["version"] and len(view["version"]) == 12
        assert params[f"feature_view.{name}.ttl_seconds"] == view["ttl_seconds"] > 0
        assert params[f"feature_view.{name}.features"].split(",") == view["features"]
    assert json.loads(run.tags["gradeflow.feature_views"]) == {
        n: v["version"] for n, v in lineage["views"].items()
    }
    # the model's schema is the store's features, term_grade included
    columns = json.loads(run.artifacts["columns.json"])
    assert [c["name"] for c in columns] == [c.name for c in store_spec(_flat(settings)).columns or []]


def _flat(settings: TrainerSettings):
    from gradeflow_shared.datasets import load_spec

    return load_spec(settings.dataset)


def test_the_default_source_is_the_flat_dataset(tmp_path: Path) -> None:
    data = service.assemble_data(unit_settings(tmp_path, rows=200), RetrainRequest(use_production_data=False))
    assert data.feature_lineage is None and "term_grade" not in data.X_train.columns
    assert not (tmp_path / "data" / "feature_store").exists()


def test_a_file_without_time_trains_from_its_snapshot(tmp_path: Path) -> None:
    """uci-por through the store: one snapshot per row, so the training rows are the file's rows."""
    from gradeflow_shared.datasets import load_dataset, load_spec

    got = store_training_set(unit_settings(tmp_path, feature_source="feast", dataset="uci-por"))
    X, y, _ = load_dataset(load_spec("uci-por"))
    assert got.spec.name == "uci-por" and set(got.lineage["views"]) == {"student_profile", "student_activity"}
    assert set(got.lineage["views"]["student_activity"]["features"]) == {"studytime", "absences", "health"}
    pd.testing.assert_frame_equal(got.X[list(X.columns)], X.reset_index(drop=True), check_dtype=False)
    assert got.y.tolist() == y.tolist()
