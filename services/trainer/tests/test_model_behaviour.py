"""Behavioural tests of the trained model (directional, invariance, minimum functionality)
and of the drift scenarios the platform's end-to-end loop relies on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gradeflow_shared import synth
from gradeflow_shared.datasets import load_dataset
from gradeflow_trainer import pipeline as P

GBR = ("gbr", {"n_estimators": 150, "learning_rate": 0.08, "max_depth": 3, "subsample": 0.8})


@pytest.fixture(scope="module")
def split() -> tuple:
    X, y, cols = load_dataset(synth.synthetic_spec(rows=2500, seed=5))
    return (*P.split(X, y, test_size=0.2, seed=0), cols)


@pytest.fixture(scope="module")
def model(split: tuple) -> P.FitResult:
    X_tr, _, y_tr, _, cols = split
    return P.fit(X_tr, y_tr, cols, search=False, candidates=[GBR])


def _predict(model: P.FitResult, X: pd.DataFrame, cols: list) -> np.ndarray:
    return np.asarray(model.pipeline.predict(P.prepare_frame(X, cols)))


def test_minimum_functionality_beats_naive(model: P.FitResult, split: tuple) -> None:
    _, X_te, y_tr, y_te, cols = split
    ours = P.evaluate(model.pipeline, P.prepare_frame(X_te, cols), y_te)
    naive = P.naive_metrics(y_tr, y_te)
    assert ours["rmse"] < 0.5 * naive["rmse"] and ours["mae"] < 0.5 * naive["mae"]
    assert ours["r2"] > 0.8


@pytest.mark.parametrize(
    "column, delta, upper", [("attendance_pct", 10.0, 100.0), ("study_hours_per_week", 5.0, 40.0)]
)
def test_directional_more_is_not_worse(
    model: P.FitResult, split: tuple, column: str, delta: float, upper: float
) -> None:
    _, X_te, _, _, cols = split
    before = _predict(model, X_te, cols)
    more = X_te.copy()
    more[column] = np.minimum(more[column] + delta, upper)
    after = _predict(model, more, cols)
    change = after - before
    assert change.mean() > 0.05, f"raising {column} should raise the grade on average"
    assert np.mean(change < -0.5) < 0.02, f"raising {column} lowered many predictions materially"


def test_directional_low_attendance_hurts(model: P.FitResult, split: tuple) -> None:
    _, X_te, _, _, cols = split
    low = X_te.copy()
    low["attendance_pct"] = 50.0
    assert (_predict(model, X_te, cols) - _predict(model, low, cols)).mean() > 1.0


def test_invariance_irrelevant_field_and_student_id(model: P.FitResult, split: tuple) -> None:
    _, X_te, _, _, cols = split
    X = X_te.iloc[:200]
    base = _predict(model, X, cols)
    extra = X.assign(student_id=[f"s{i}" for i in range(len(X))], favourite_colour="blue")
    np.testing.assert_array_equal(_predict(model, extra, cols), base)
    renamed = X.assign(student_id=[f"other-{i * 7}" for i in range(len(X))])
    np.testing.assert_array_equal(_predict(model, renamed, cols), base)
    # the ONNX feed ignores unknown keys too
    onnx_bytes, _ = P.compile_onnx(model.pipeline, cols, X)
    recs = extra.to_dict(orient="records")
    np.testing.assert_allclose(P.onnx_predict(onnx_bytes, P.onnx_inputs(recs, cols)), base, atol=1e-3)


def test_concept_drift_hurts_and_retraining_recovers(model: P.FitResult, split: tuple) -> None:
    """The contract the platform's end-to-end test relies on (synth.SCENARIOS)."""
    _, X_te, _, y_te, cols = split
    mae_normal = P.evaluate(model.pipeline, P.prepare_frame(X_te, cols), y_te)["mae"]
    Xd, yd, _ = load_dataset(synth.synthetic_spec(rows=1500, seed=9, scenario="concept_study_hours"))
    Xd_tr, Xd_te, yd_tr, yd_te = P.split(Xd, yd, test_size=0.4, seed=0)
    mae_before = P.evaluate(model.pipeline, P.prepare_frame(Xd_te, cols), yd_te)["mae"]
    assert mae_before >= 1.5 * mae_normal
    retrained = P.fit(Xd_tr, yd_tr, cols, search=False, candidates=[GBR])
    mae_after = P.evaluate(retrained.pipeline, P.prepare_frame(Xd_te, cols), yd_te)["mae"]
    assert mae_after <= 0.8 * mae_before


def test_covariate_and_new_category_scenarios_do_not_break_predictions(model: P.FitResult) -> None:
    for scenario in ("covariate_attendance", "new_category", "missing_values"):
        Xd, yd, cols = load_dataset(synth.synthetic_spec(rows=400, seed=4, scenario=scenario))
        pred = _predict(model, Xd, cols)
        assert np.isfinite(pred).all(), scenario
        assert P.evaluate(model.pipeline, P.prepare_frame(Xd, cols), yd)["r2"] > 0.5, scenario
