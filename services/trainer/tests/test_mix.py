"""Choosing the training mix by validation on the older labelled production rows (``mix``)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gradeflow_shared.contracts import RetrainRequest
from gradeflow_shared.datasets import ColumnSpec
from gradeflow_shared.synth import COLUMNS, TARGET, generate, synthetic_spec
from gradeflow_trainer import mix, service
from gradeflow_trainer import pipeline as P
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.labelled import LabelledRows
from gradeflow_trainer.registry import InMemoryRegistry

COLS = [
    ColumnSpec(name="x1", kind="numeric"),
    ColumnSpec(name="x2", kind="numeric"),
    ColumnSpec(name="c", kind="categorical", dtype="str"),
]


def frame(n: int, seed: int, shift: float = 0.0) -> tuple[pd.DataFrame, pd.Series]:
    """A step function of x1, x2 and c + noise (trees of every family fit it alike); ``shift`` adds a
    step on x2 > 0 (a concept shift of the population)."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "x1": rng.normal(0, 1, n),
            "x2": rng.normal(0, 1, n),
            "c": rng.choice(["a", "b", "c"], n).astype(object),
        }
    )
    y = (
        3 * (X["x1"] > 0)
        + 2 * (X["x2"] > 0.5)
        + (X["c"] == "a")
        + rng.normal(0, 0.5, n)
        + shift * (X["x2"] > 0)
    )
    return X, pd.Series(y.to_numpy(), name="y")


def test_time_folds_are_expanding_and_validate_only_newer_rows() -> None:
    folds = mix.time_folds(100, 3)
    assert folds == [(25, 25, 50), (50, 50, 75), (75, 75, 100)]
    for fit_end, v0, v1 in folds:
        assert fit_end == v0 < v1  # validation rows come after every row fitted on
    assert mix.time_folds(5, 10)[-1][2] == 5  # more folds than rows: capped, still covers the end


def test_candidates_start_with_the_default_and_do_not_repeat_a_weight() -> None:
    names = [m.name for m in mix.candidates(400, 40)]
    assert names == [
        "weight_1",
        "weight_3",
        "weight_10",
        "base_only",
        "production_only",
        "residual_boost",
    ]  # balanced = 10
    names = [m.name for m in mix.candidates(400, 70, extra_weight=6)]  # an explicit PRODUCTION_WEIGHT
    assert names == [
        "weight_1",
        "weight_3",
        "weight_10",
        "balanced",
        "weight_6",
        "base_only",
        "production_only",
        "residual_boost",
    ]
    assert {m.name: m.weight for m in mix.candidates(400, 70)}["balanced"] == pytest.approx(400 / 70)


def synth(n: int, seed: int, scenario: str | None = None) -> tuple[pd.DataFrame, pd.Series]:
    df = generate(n, seed=seed, scenario=scenario)
    return P.prepare_frame(df, COLUMNS), df[TARGET].astype(float)


def test_a_shifted_population_makes_production_count_heavily() -> None:
    Xb, yb = synth(500, seed=0)
    Xp, yp = synth(150, seed=11, scenario="concept_study_hours")  # study hours stop paying off
    choice = mix.choose(Xb, yb, Xp, yp, COLUMNS)
    s = {c.name: c for c in choice.report.candidates}
    assert choice.mix.name in {"weight_10", "balanced", "production_only", "residual_boost"}, choice.report
    assert s[choice.mix.name].val_mae < 0.8 * s["weight_1"].val_mae
    assert s["production_only"].val_mae < s["weight_1"].val_mae  # the base data misleads here
    assert choice.report.selected and choice.mix.name in choice.report.reason
    assert all(c.validation_rows == 150 - mix.time_folds(150, 3)[0][0] for c in choice.report.candidates)


def test_no_shift_keeps_the_default_light_weight() -> None:
    Xb, yb = synth(500, seed=0)
    Xp, yp = synth(150, seed=11)  # the same population
    choice = mix.choose(Xb, yb, Xp, yp, COLUMNS)
    assert choice.mix.name == "weight_1" and "default kept" in choice.report.reason, choice.report
    s = {c.name: c.val_mae for c in choice.report.candidates}
    assert s["production_only"] > s["weight_1"]  # 150 rows alone are worse than 500 + 150 of the same kind
    assert "residual_boost left out" in choice.report.reason  # its stages do not improve its base here


def test_residual_boost_learns_the_shift_and_exports_to_onnx() -> None:
    Xb, yb = frame(400, seed=5)
    Xp, yp = frame(120, seed=6, shift=4.0)
    X = pd.concat([Xb, Xp], ignore_index=True)
    y = pd.concat([yb, yp], ignore_index=True)
    fitted = mix.fit_residual(X, y, len(Xb), COLS)
    base = mix.residual_base(Xb, yb, COLS)
    Xn, yn = frame(200, seed=7, shift=4.0)
    err = {
        "residual": P.evaluate(fitted.pipeline, P.prepare_frame(Xn, COLS), yn)["mae"],
        "base": P.evaluate(base, P.prepare_frame(Xn, COLS), yn)["mae"],
    }
    assert err["residual"] < 0.6 * err["base"], err
    gbr = fitted.pipeline.named_steps["model"]
    assert len(gbr.estimators_) == mix.RESIDUAL_BASE["n_estimators"] + mix.RESIDUAL_STAGES["n_estimators"]
    _, diff = P.compile_onnx(fitted.pipeline, COLS, Xn)  # served like any other export
    assert diff <= P.ONNX_TOLERANCE


# ------------------------------------------------------------------ in the trainer's flow
@pytest.fixture
def settings(tmp_path: Path) -> TrainerSettings:
    spec = tmp_path / "synthetic.json"
    spec.write_text(synthetic_spec(rows=900, seed=0).model_dump_json())
    return TrainerSettings(
        data_dir=tmp_path / "data",
        admin_token="unit-test-token-0123456789",
        train_on_start=False,
        inference_url="",
        mlflow_tracking_uri="http://127.0.0.1:9",
        dataset=str(spec),
        train_search=False,
    )


def labelled(n: int, scenario: str | None = None) -> LabelledRows:
    df = generate(n, seed=11, scenario=scenario)
    return LabelledRows(P.prepare_frame(df, COLUMNS), df[TARGET].astype(float))


def test_the_chosen_mix_is_in_the_result_the_run_and_the_progress(
    settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        service, "fit", functools.partial(P.fit, candidates=[("gbr", {"n_estimators": 60, "max_depth": 3})])
    )
    reg = InMemoryRegistry()
    service.train_once(settings, RetrainRequest(reason="first"), registry=reg)
    monkeypatch.setattr(service, "pull_labelled", lambda *a, **k: labelled(300, "concept_study_hours"))
    stages: list[str] = []
    r = service.train_once(
        settings, RetrainRequest(reason="drift"), lambda s, f: stages.append(s), registry=reg
    )
    assert r.mix is not None and r.mix.selected and r.mix.candidates
    assert r.rows["production_train"] == 210 and r.rows["production_holdout"] == 90
    chosen = {c.name: c for c in r.mix.candidates}[r.mix.chosen]
    assert chosen.val_mae == min(c.val_mae for c in r.mix.candidates) or "default kept" in r.mix.reason
    record = reg.runs[r.run_id].record
    assert record.params["mix"] == r.mix.chosen and record.tags["gradeflow.mix"] == r.mix.chosen
    assert record.metrics[f"mix_{r.mix.chosen}_val_mae"] == pytest.approx(chosen.val_mae)
    assert record.metrics["mix_validation_rows"] == 210 - 52
    assert f"training mix: {r.mix.chosen}" in stages


def test_too_few_production_rows_fall_back_to_the_fixed_weight(settings: TrainerSettings) -> None:
    spec, X, y, columns = service.load_base(settings)
    data = service.training_data(settings, spec, columns, X, y, labelled(55))  # 38 train rows >= 30
    assert data.mix is not None and data.mix.selected
    few = settings.model_copy(update={"mix_min_rows": 40})
    data = service.training_data(few, spec, columns, X, y, labelled(55))
    assert data.mix is not None and not data.mix.selected and data.mix.chosen == "auto_weight"
    assert "MIX_MIN_ROWS=40" in data.mix.reason and data.weights is not None
    w = settings.effective_production_weight(len(X) - data.rows["test"], 38)
    assert data.mix.production_weight == w and float(data.weights[-1]) == w  # today's behaviour
    off = settings.model_copy(update={"train_mix": False})
    data = service.training_data(off, spec, columns, X, y, labelled(300))
    assert data.mix is not None and not data.mix.selected and "TRAIN_MIX is off" in data.mix.reason


def test_production_only_trains_on_production_rows_but_keeps_the_whole_reference(
    settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, X, y, columns = service.load_base(settings)
    forced = mix.MixChoice(
        mix=mix.Mix("production_only", "production_only"),
        report=mix.fixed(1, "test").report.model_copy(
            update={"chosen": "production_only", "kind": "production_only"}
        ),
    )
    monkeypatch.setattr(mix, "choose", lambda *a, **k: forced)
    data = service.training_data(settings, spec, columns, X, y, labelled(300))
    assert len(data.X_train) == 210 and data.weights is None
    # REFIT_ON_ALL_ROWS: the refit is on all 300 production rows; the reference: every row of the served model
    assert data.X_refit is not None and len(data.X_refit) == 300 and data.refit_weights is None
    assert len(data.X_ref) == len(X) + 300  # REFIT_ON_BASE_HOLDOUT (default): the base holdout too
    assert not data.refit_base_holdout  # but the production-only refit never saw it
    off = settings.model_copy(update={"refit_on_all_rows": False})
    data = service.training_data(off, spec, columns, X, y, labelled(300))
    assert (
        data.X_refit is None and len(data.X_ref) == len(X) - data.rows["test"] + 210
    )  # every training row once


def test_the_job_shows_the_mix(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from gradeflow_shared.contracts import GateDecision, MixScore, TrainingMix, TrainResult
    from gradeflow_trainer.app import create_app

    token = "s3cret-token-of-the-mix-tests"
    chosen = TrainingMix(
        chosen="production_only",
        kind="production_only",
        reason="production_only chosen on 3 time-ordered folds",
        selected=True,
        candidates=[MixScore(name="production_only", val_mae=1.0, val_rmse=1.2, validation_rows=80)],
    )

    def train(request: RetrainRequest, progress: object) -> TrainResult:
        return TrainResult(
            run_id="r1",
            version=2,
            model_name="m",
            metrics={"rmse": 1.0},
            decision=GateDecision(promoted=True, reason="test"),
            exported=True,
            mix=chosen,
        )

    s = TrainerSettings(
        data_dir=tmp_path,
        admin_token=token,
        train_on_start=False,
        inference_url="",
        mlflow_tracking_uri="http://127.0.0.1:9",
    )
    with TestClient(create_app(s, train_fn=train)) as c:
        job = c.post("/retrain", json={}, headers={"Authorization": f"Bearer {token}"}).json()
        c.app.state.runner.wait(job["id"], 60.0)  # type: ignore[attr-defined]
        body = c.get(f"/jobs/{job['id']}").json()
    assert body["state"] == "succeeded", body
    assert body["result"]["mix"]["chosen"] == "production_only"
    assert body["result"]["mix"]["candidates"][0] == {
        "name": "production_only",
        "val_mae": 1.0,
        "val_rmse": 1.2,
        "validation_rows": 80,
    }
