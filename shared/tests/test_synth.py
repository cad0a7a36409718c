"""The synthetic generator: seeded, bounded, and each drift scenario shifts what it says."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gradeflow_shared import synth


@pytest.fixture(scope="module")
def base() -> pd.DataFrame:
    return synth.generate(3000, seed=11)


def test_same_seed_gives_identical_frame_and_other_seed_differs() -> None:
    a = synth.generate(500, seed=3)
    b = synth.generate(500, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = synth.generate(500, seed=4)
    assert not a[synth.TARGET].equals(c[synth.TARGET])


def test_schema_bounds_and_categories(base: pd.DataFrame) -> None:
    assert list(base.columns) == [*synth.FEATURES, synth.TARGET]
    kinds = {c.kind for c in synth.COLUMNS}
    assert kinds == {"numeric", "categorical"} and len(synth.COLUMNS) >= 12
    assert base.notna().all().all()
    for c in synth.COLUMNS:
        s = base[c.name]
        if c.kind == "numeric":
            assert c.min is not None and c.max is not None
            assert s.min() >= c.min and s.max() <= c.max, c.name
            if c.dtype == "int":
                assert (s == s.round()).all(), c.name
        else:
            assert c.categories and set(s.unique()) <= set(c.categories), c.name
            assert s.nunique() == len(c.categories), f"{c.name}: every category occurs"
    y = base[synth.TARGET]
    assert y.between(0, 20).all() and 8 < y.mean() < 13 and y.std() > 2


def test_target_is_non_linear_in_study_hours_and_attendance(base: pd.DataFrame) -> None:
    y = base[synth.TARGET]
    study = base["study_hours_per_week"]
    # saturating: the first 8 hours are worth more than the next 8
    low, mid, high = (y[study.between(a, b)].mean() for a, b in ((0, 3), (8, 11), (16, 19)))
    assert mid - low > high - mid > -0.5
    # threshold: grades collapse below ~70% attendance, little change above 85%
    att = base["attendance_pct"]
    assert y[att < 65].mean() < y[att.between(75, 85)].mean() - 2.0


def test_unknown_scenario_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        synth.generate(10, scenario="nope")


def test_required_scenarios_are_described() -> None:
    for name in ("none", "covariate_attendance", "concept_study_hours", "new_category"):
        assert synth.SCENARIOS[name]


def test_covariate_attendance_shifts_attendance_and_absences_only(base: pd.DataFrame) -> None:
    d = synth.generate(3000, seed=11, scenario="covariate_attendance")
    assert d["attendance_pct"].mean() < base["attendance_pct"].mean() - 15
    assert d["absences"].mean() > base["absences"].mean() + 5
    pd.testing.assert_series_equal(d["study_hours_per_week"], base["study_hours_per_week"])
    pd.testing.assert_series_equal(d["school_type"], base["school_type"])
    weaker = synth.generate(3000, seed=11, scenario="covariate_attendance", severity=0.3)
    assert base["attendance_pct"].mean() > weaker["attendance_pct"].mean() > d["attendance_pct"].mean()


def test_concept_drift_keeps_features_changes_the_study_effect(base: pd.DataFrame) -> None:
    d = synth.generate(3000, seed=11, scenario="concept_study_hours")
    pd.testing.assert_frame_equal(d[synth.FEATURES], base[synth.FEATURES])
    diff = d[synth.TARGET] - base[synth.TARGET]
    study = base["study_hours_per_week"]
    # little study is punished, a lot of study rewarded, compared with before
    assert diff[study < 4].mean() < -1.5
    assert diff[study > 20].mean() > 1.0
    assert diff.abs().mean() > 1.5


def test_new_category_appears_outside_the_declared_list(base: pd.DataFrame) -> None:
    d = synth.generate(3000, seed=11, scenario="new_category")
    spec = next(c for c in synth.COLUMNS if c.name == "school_type")
    assert spec.categories is not None and "online" not in spec.categories
    share = (d["school_type"] == "online").mean()
    assert 0.3 < share < 0.5
    assert (d.loc[d["school_type"] == "online", "commute_minutes"] == 0).all()
    assert "online" not in set(base["school_type"])


def test_missing_values_scenario_blanks_some_cells() -> None:
    d = synth.generate(2000, seed=1, scenario="missing_values")
    for col in ("attendance_pct", "sleep_hours", "motivation"):
        assert 0.1 < d[col].isna().mean() < 0.3, col
    assert d[synth.TARGET].notna().all()


def test_synthetic_spec_describes_the_generator() -> None:
    spec = synth.synthetic_spec(rows=123, seed=5)
    assert spec.path is None and spec.target == synth.TARGET and spec.rows == 123 and spec.seed == 5
    assert [c.name for c in spec.columns or []] == synth.FEATURES
    assert np.isclose(spec.target_max or 0, 20)
