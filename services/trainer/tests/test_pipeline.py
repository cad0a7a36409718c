"""The ML core: pipeline building, search, evaluation and ONNX agreement (no MLflow, no HTTP)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gradeflow_shared import synth
from gradeflow_shared.datasets import load_dataset
from gradeflow_shared.errors import ExportError
from gradeflow_trainer import pipeline as P

SMALL_GBR = ("gbr", {"n_estimators": 60, "learning_rate": 0.1, "max_depth": 3})


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.Series, list]:
    X, y, cols = load_dataset(synth.synthetic_spec(rows=1200, seed=2))
    return X, y, cols


@pytest.fixture(scope="module")
def fitted(data: tuple) -> P.FitResult:
    X, y, cols = data
    return P.fit(X, y, cols, search=False, candidates=[SMALL_GBR])


def test_split_is_seeded_and_sized(data: tuple) -> None:
    X, y, _ = data
    a = P.split(X, y, test_size=0.25, seed=3)
    b = P.split(X, y, test_size=0.25, seed=3)
    assert len(a[0]) == 900 and len(a[1]) == 300 and len(a[2]) == 900 and len(a[3]) == 300
    pd.testing.assert_frame_equal(a[1], b[1])
    assert not a[1].equals(P.split(X, y, test_size=0.25, seed=4)[1])


def test_search_picks_the_lowest_cv_error_and_reports_progress(data: tuple) -> None:
    X, y, cols = data
    seen: list[tuple[str, float]] = []
    res = P.fit(
        X.iloc[:600],
        y.iloc[:600],
        cols,
        search=True,
        folds=3,
        candidates=[("ridge", {"alpha": 1000.0}), SMALL_GBR],
        progress=lambda stage, frac: seen.append((stage, frac)),
    )
    assert len(res.cv_rmse) == 2
    assert res.family == "gbr" and min(res.cv_rmse, key=res.cv_rmse.__getitem__).startswith("gbr")
    fracs = [f for _, f in seen]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0


def test_default_search_space_is_bounded_and_convertible() -> None:
    for n in (500, 5000):
        space = P.search_space(n)
        assert 2 <= len(space) <= 8
        assert {f for f, _ in space} <= set(P.FAMILIES)


def test_evaluate_and_naive_metrics(fitted: P.FitResult, data: tuple) -> None:
    X, y, cols = data
    m = P.evaluate(fitted.pipeline, X, y)
    assert set(m) == {"mae", "rmse", "r2"} and 0 < m["mae"] <= m["rmse"] and m["r2"] > 0.8
    n = P.naive_metrics(pd.Series([1.0, 3.0]), pd.Series([0.0, 4.0]))
    assert n["mae"] == pytest.approx(2.0) and n["rmse"] == pytest.approx(2.0)
    assert n["r2"] == pytest.approx(1 - 8 / 8)  # predicting the test mean exactly gives r2 = 0


def test_handles_missing_unseen_and_out_of_range_values(fitted: P.FitResult, data: tuple) -> None:
    X, _, cols = data
    rows = X.iloc[:5].copy()
    rows.loc[rows.index[0], "attendance_pct"] = np.nan
    rows.loc[rows.index[1], "school_type"] = "online"  # never seen in training
    rows.loc[rows.index[2], "study_hours_per_week"] = 400.0  # far outside [0, 40]
    rows.loc[rows.index[3], "motivation"] = np.nan
    rows.loc[rows.index[4], ["age", "absences", "internet_access"]] = [np.nan, -5.0, None]
    pred = fitted.pipeline.predict(P.prepare_frame(rows, cols))
    assert np.isfinite(pred).all()
    onnx_bytes, diff = P.compile_onnx(fitted.pipeline, cols, rows)
    assert diff < P.ONNX_TOLERANCE
    got = P.onnx_predict(onnx_bytes, P.onnx_inputs(rows.to_dict(orient="records"), cols))
    np.testing.assert_allclose(got, pred, atol=1e-3)


def test_onnx_agrees_with_sklearn_on_many_rows(fitted: P.FitResult, data: tuple) -> None:
    X, _, cols = data
    onnx_bytes, diff = P.compile_onnx(fitted.pipeline, cols, X.iloc[:500])
    assert 0 <= diff < 1e-4 and len(onnx_bytes) > 1000


def test_onnx_inputs_follow_the_contract(data: tuple) -> None:
    _, _, cols = data
    recs = [
        {"age": 17, "school_type": "public", "study_hours_per_week": "12.5", "student_id": "x1"},
        {"age": None, "school_type": None, "attendance_pct": float("nan")},
        {},
    ]
    feed = P.onnx_inputs(recs, cols)
    assert list(feed) == [c.name for c in cols]
    assert feed["age"].dtype == np.float32 and feed["age"].shape == (3, 1)
    assert feed["age"][0, 0] == 17 and math.isnan(feed["age"][1, 0]) and math.isnan(feed["age"][2, 0])
    assert feed["study_hours_per_week"][0, 0] == pytest.approx(12.5)
    assert feed["school_type"].shape == (3, 1)
    assert feed["school_type"][:, 0].tolist() == ["public", P.MISSING_CATEGORY, P.MISSING_CATEGORY]
    assert "student_id" not in feed
    assert P.onnx_inputs({"age": 16}, cols)["age"].shape == (1, 1)


def test_compile_refuses_a_mismatch(
    fitted: P.FitResult, data: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    X, _, cols = data
    monkeypatch.setattr(P, "ONNX_TOLERANCE", 0.0)  # float32 trees always differ by a few 1e-6
    with pytest.raises(ExportError, match="differ by up to"):
        P.compile_onnx(fitted.pipeline, cols, X.iloc[:200])


@pytest.mark.parametrize("family", ["ridge", "rf", "blend"])
def test_other_families_convert_exactly(family: str, data: tuple) -> None:
    X, y, cols = data
    params = {
        "ridge": {"alpha": 1.0},
        "rf": {"n_estimators": 10, "min_samples_leaf": 5},
        "blend": {"rf_n_estimators": 10, "gbr_n_estimators": 20},
    }[family]
    pipe = P.build_pipeline(cols, family, params).fit(X.iloc[:400], y.iloc[:400])
    _, diff = P.compile_onnx(pipe, cols, X.iloc[400:700])
    assert diff < P.ONNX_TOLERANCE


def test_unknown_family_is_refused(data: tuple) -> None:
    with pytest.raises(ValueError, match="unknown model family"):
        P.build_pipeline(data[2], "svm", {})


def test_sample_weight_lets_weighted_rows_dominate(data: tuple) -> None:
    X, y, cols = data
    old, new = X.iloc[:300], X.iloc[:300]
    Xc = pd.concat([old, new], ignore_index=True)
    yc = pd.concat([y.iloc[:300], y.iloc[:300] + 4.0], ignore_index=True)
    ridge = [("ridge", {"alpha": 1.0})]
    plain = P.fit(Xc, yc, cols, search=False, candidates=ridge)
    weighted = P.fit(Xc, yc, cols, search=False, candidates=ridge, sample_weight=[1.0] * 300 + [20.0] * 300)
    Xp = P.prepare_frame(old, cols)
    shift_plain = (plain.pipeline.predict(Xp) - y.iloc[:300]).mean()
    shift_weighted = (weighted.pipeline.predict(Xp) - y.iloc[:300]).mean()
    assert abs(shift_plain - 2.0) < 0.3 and shift_weighted > 3.5
    with pytest.raises(ValueError, match="sample_weight"):
        P.fit(Xc, yc, cols, search=False, candidates=ridge, sample_weight=[1.0])


def test_search_keeps_the_preferred_candidate_within_cv_noise(data: tuple) -> None:
    X, y, cols = data
    near_twins = [("ridge", {"alpha": 1.0}), ("ridge", {"alpha": 0.9})]
    res = P.fit(X.iloc[:400], y.iloc[:400], cols, search=True, folds=3, candidates=near_twins)
    scores = list(res.cv_rmse.values())
    assert abs(scores[0] - scores[1]) < P.SELECT_TOLERANCE * scores[0]
    assert res.params == {"alpha": 1.0}


class _Clock:
    """A monotonic clock that moves one second per reading (the search's budget check reads it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now


RIDGES = [("ridge", {"alpha": 1e5}), ("ridge", {"alpha": 1.0}), ("ridge", {"alpha": 0.5})]


def test_search_budget_stops_early_and_keeps_the_best_so_far(
    data: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    X, y, cols = data
    full = P.fit(X, y, cols, candidates=RIDGES, budget_seconds=None)
    assert full.tried == 3 and full.candidates == 3 and not full.budget_stopped
    # clock: t0=1, search start=2; before the 2nd candidate 2 s spent after one (2 + 2 <= 4.2: go on),
    # before the 3rd 3 s after two (3 + 1.5 > 4.2: stop); the better of the two (alpha 1) beats the first
    monkeypatch.setattr(P, "time", _Clock())
    res = P.fit(X, y, cols, candidates=RIDGES, budget_seconds=4.2)
    assert res.tried == 2 and res.budget_stopped and res.budget_seconds == 4.2
    assert list(res.cv_rmse) == [P._label(*RIDGES[0]), P._label(*RIDGES[1])]
    assert res.params == {"alpha": 1.0}
    assert res.cv_rmse[P._label(*RIDGES[1])] < res.cv_rmse[P._label(*RIDGES[0])]


def test_search_budget_zero_scores_the_preferred_candidate_only(data: tuple) -> None:
    X, y, cols = data
    res = P.fit(X, y, cols, candidates=RIDGES, budget_seconds=0)
    assert res.tried == 1 and res.budget_stopped and res.params == {"alpha": 1e5}
    assert res.search_seconds > 0
