"""Data over time: the synthetic term mode and the single snapshot of a file without time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from gradeflow_shared import synth
from gradeflow_shared.datasets import load_dataset, load_spec
from gradeflow_shared.features.seed import history_of, spec_key, store_spec
from gradeflow_shared.history import snapshot

START = datetime(2026, 2, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
def term() -> synth.History:
    return synth.generate_term(400, seed=9, start=START)


def test_same_arguments_give_identical_terms() -> None:
    a, b = synth.generate_term(50, seed=2, start=START), synth.generate_term(50, seed=2, start=START)
    for name in ("profile", "activity", "labels"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    c = synth.generate_term(50, seed=3, start=START)
    assert not a.labels[synth.TARGET].equals(c.labels[synth.TARGET])


def test_the_term_ends_in_the_flat_mode_students(term: synth.History) -> None:
    flat = synth.generate(400, seed=9)
    assert term.labels[synth.TARGET].tolist() == flat[synth.TARGET].tolist()
    profile_cols = [c for c in synth.FEATURES if c not in synth.ACTIVITY_COLUMNS]
    pd.testing.assert_frame_equal(term.profile[profile_cols], flat[profile_cols])
    last = term.activity.sort_values("event_timestamp").groupby("student_id", sort=True).last()
    assert last["attendance_pct"].tolist() == flat["attendance_pct"].tolist()
    assert last["absences"].tolist() == flat["absences"].tolist()
    assert last["tutoring_sessions"].tolist() == flat["tutoring_sessions"].tolist()


def test_readings_are_dated_within_the_term_and_before_the_label(term: synth.History) -> None:
    ids = term.labels["student_id"]
    assert ids.is_unique and ids.iloc[0] == "S-00001" and len(ids) == 400
    act = term.activity
    assert len(act) == 400 * synth.TERM_WEEKS
    assert act["event_timestamp"].min() >= pd.Timestamp(START)
    assert (term.profile["event_timestamp"] < act["event_timestamp"].min()).all()
    label_time = term.labels["event_timestamp"].iloc[0]
    assert (term.labels["event_timestamp"] == label_time).all() and act["event_timestamp"].max() < label_time
    per = act.sort_values("event_timestamp").groupby("student_id")
    assert per["absences"].apply(lambda s: s.is_monotonic_increasing).all()  # absences accumulate
    weeks = per["event_timestamp"].apply(lambda s: s.diff().dropna().min())
    assert (weeks > timedelta(0)).all()  # one reading a week, in order
    # term grades: posted four times, so at most four distinct running means a student
    assert per["term_grade"].nunique().max() <= len(synth.GRADE_WEEKS)
    for c in synth.COLUMNS + [synth.TERM_GRADE]:
        if c.name in act.columns:
            assert act[c.name].between(c.min, c.max).all(), c.name


def test_term_readings_inform_the_final_grade(term: synth.History) -> None:
    last = term.activity.sort_values("event_timestamp").groupby("student_id", sort=True).last()
    first = term.activity.sort_values("event_timestamp").groupby("student_id", sort=True).first()
    y = term.labels.set_index("student_id")[synth.TARGET]
    assert last["term_grade"].corr(y) > 0.8 and last["term_grade"].corr(y) > first["term_grade"].corr(y)


def test_start_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone"):
        synth.generate_term(5, start=datetime(2026, 1, 5))


def test_a_file_without_time_loads_as_one_snapshot_per_student() -> None:
    spec = load_spec("uci-por")
    X, y, _ = load_dataset(spec)
    at = datetime(2026, 6, 30, tzinfo=UTC)
    hist = snapshot(X, y, spec.activity_columns, prefix=spec.name, at=at)
    assert hist.students == len(X) and hist.labels["student_id"].iloc[0] == "uci-por-00001"
    assert (hist.profile["event_timestamp"] == pd.Timestamp(at)).all()
    assert (hist.activity["event_timestamp"] == pd.Timestamp(at)).all()
    assert (hist.labels["event_timestamp"] > pd.Timestamp(at)).all()
    assert list(hist.activity.columns[2:]) == spec.activity_columns
    assert hist.labels[spec.target].tolist() == y.tolist()
    # the same file, loaded through the store's seeding path, gets the same ids and values
    again = history_of(store_spec(spec), at + timedelta(days=1))
    pd.testing.assert_frame_equal(again.profile, hist.profile)


def test_the_store_spec_of_synthetic_is_the_term() -> None:
    flat = synth.synthetic_spec(rows=300, seed=4)
    term_spec = store_spec(flat)
    assert term_spec.name == "synthetic-term" and term_spec.rows == 300 and term_spec.seed == 4
    assert [c.name for c in term_spec.columns or []] == [*synth.FEATURES, "term_grade"]
    assert spec_key(term_spec) != spec_key(store_spec(synth.synthetic_spec(rows=300, seed=5)))
