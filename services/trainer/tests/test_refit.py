"""Validate, then refit (REFIT_ON_ALL_ROWS): the served model is the same procedure refitted on the
training rows + the gate's recent holdout (+ the base holdout, REFIT_ON_BASE_HOLDOUT); metrics, gate and
baseline stay those of the fit before, and a later gate never evaluates a champion on rows it was refitted on."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from gradeflow_shared import manifest as mf
from gradeflow_shared.contracts import RetrainRequest, TrainResult
from gradeflow_shared.synth import COLUMNS, TARGET, generate
from gradeflow_trainer import gate, mix, service
from gradeflow_trainer import pipeline as P
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.export import load_export
from gradeflow_trainer.labelled import LabelledRows
from gradeflow_trainer.registry import InMemoryRegistry

from .conftest import unit_settings

GOOD = ("gbr", {"n_estimators": 60, "learning_rate": 0.1, "max_depth": 3})


@pytest.fixture
def settings(tmp_path: Path) -> TrainerSettings:
    return unit_settings(tmp_path, rows=1200)


def labelled(n: int = 300, scenario: str | None = "concept_study_hours") -> LabelledRows:
    df = generate(n, seed=11, scenario=scenario)
    return LabelledRows(P.prepare_frame(df, COLUMNS), df[TARGET].astype(float), {})


def candidate(
    settings: TrainerSettings, scenario: str | None = "concept_study_hours"
) -> tuple[service.TrainingData, service.Candidate]:
    spec, X, y, columns = service.load_base(settings)
    data = service.training_data(settings, spec, columns, X, y, labelled(scenario=scenario))
    return data, service.fit_candidate(settings, data)


@pytest.fixture(autouse=True)
def fast_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "fit", functools.partial(P.fit, candidates=[GOOD]))


@pytest.mark.parametrize("with_base_holdout", [True, False])  # REFIT_ON_BASE_HOLDOUT (default on)
@pytest.mark.parametrize("scenario", [None, "concept_study_hours"])  # weight_1 / residual_boost
def test_the_refit_adds_the_recent_holdout_and_the_metrics_stay_those_of_the_fit_before(
    settings: TrainerSettings, scenario: str | None, with_base_holdout: bool
) -> None:
    settings = settings.model_copy(update={"refit_on_base_holdout": with_base_holdout})
    data, cand = candidate(settings, scenario)
    assert data.mix is not None
    n_base_train = data.rows["train"] - data.rows["production_train"]
    n_base = n_base_train + (data.rows["test"] if with_base_holdout else 0)  # the refit's base rows
    assert data.rows["production_train"] == 210 and data.rows["production_holdout"] == 90
    assert data.X_refit is not None and data.y_refit is not None
    assert data.refit_base_holdout is with_base_holdout
    assert len(data.X_refit) == data.rows["refit"] == n_base + 300  # all labelled rows (+ the base holdout)
    assert len(data.X_ref) == n_base + 300  # the export's reference: the served model's rows
    assert cand.refit is not None and cand.pipeline is cand.refit.pipeline
    assert cand.evaluated is cand.fitted.pipeline is not cand.pipeline
    assert (cand.refit.family, cand.refit.params) == (cand.fitted.family, cand.fitted.params)  # no new search
    # the refit is exactly the procedure on the refit rows (same family, params, weights, seed)
    if data.mix.kind == "residual":  # base rows first, then every production row
        assert data.refit_base_rows == n_base and data.refit_weights is None
        again = mix.fit_residual(data.X_refit, data.y_refit, n_base, data.columns, seed=settings.seed)
    else:
        assert data.refit_weights is not None and len(data.refit_weights) == len(data.X_refit)
        again = P.fit(
            data.X_refit,
            data.y_refit,
            data.columns,
            seed=settings.seed,
            search=False,
            candidates=[(cand.fitted.family, cand.fitted.params)],
            sample_weight=data.refit_weights,
        )
    X_recent, y_recent = data.X_recent, data.y_recent
    assert X_recent is not None and y_recent is not None
    np.testing.assert_allclose(cand.pipeline.predict(X_recent), again.pipeline.predict(X_recent))
    assert not np.allclose(cand.pipeline.predict(X_recent), cand.evaluated.predict(X_recent))
    # reported metrics: the fit before the refit (the refit has seen the recent rows: lower, in-sample)
    before = P.evaluate(cand.evaluated, X_recent, y_recent)["mae"]
    after = P.evaluate(cand.pipeline, X_recent, y_recent)["mae"]
    assert cand.metrics["recent_labelled_mae"] == pytest.approx(before) and after < before
    assert cand.metrics["mae"] == pytest.approx(P.evaluate(cand.evaluated, data.X_test, data.y_test)["mae"])


def test_the_registered_and_exported_model_is_the_refit_the_gate_and_baseline_are_not(
    settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = InMemoryRegistry()
    r1 = service.train_once(settings, RetrainRequest(reason="first"), registry=reg)
    assert "refit" not in r1.rows  # base data only: no production row to add, no refit
    assert reg.runs[r1.run_id].record.params["refit"] is False
    monkeypatch.setattr(service, "pull_labelled", lambda *a, **k: labelled())
    r2 = service.train_once(settings, RetrainRequest(reason="drift"), registry=reg)
    assert r2.decision.promoted and r2.exported and r2.export_dir
    data, cand = candidate(settings)  # the same, deterministic stages, outside train_once
    record = reg.runs[r2.run_id].record
    assert record.params["refit"] is True and record.params["rows_refit"] == r2.rows["refit"] == len(
        data.X_ref
    )
    assert record.params["rows_train"] == r2.rows["train"] < r2.rows["refit"]
    assert "before the refit" in record.tags["gradeflow.refit"]
    assert record.metrics == pytest.approx({**record.metrics, **cand.metrics})  # pre-refit metrics logged
    assert r2.decision.challenger == pytest.approx(cand.challenger)  # the gate judged the fit before
    assert data.X_recent is not None
    manifest, exported = load_export(Path(r2.export_dir))
    for served in (record.pipeline, exported):
        np.testing.assert_allclose(served.predict(data.X_recent), cand.pipeline.predict(data.X_recent))
    baseline = manifest.performance_baseline
    assert baseline is not None and baseline.evaluation_set == mf.RECENT_LABELLED
    assert baseline.mae == pytest.approx(cand.metrics["recent_labelled_mae"])  # the pre-refit held-out error
    np.testing.assert_allclose(record.pred_holdout, cand.evaluated.predict(data.X_test))


def test_refit_off_keeps_the_model_fitted_on_the_training_rows(settings: TrainerSettings) -> None:
    off = settings.model_copy(update={"refit_on_all_rows": False})
    data, cand = candidate(off)
    assert data.X_refit is None and "refit" not in data.rows and cand.refit is None
    assert cand.pipeline is cand.evaluated is cand.fitted.pipeline
    n_base_train = data.rows["train"] - data.rows["production_train"]
    assert len(data.X_ref) == n_base_train + 210  # every training row once, as before
    _, on = candidate(settings)
    assert cand.metrics == pytest.approx(on.metrics)  # the same evaluated fit either way


def _live_base_rmse(reg: InMemoryRegistry, version: int, data: service.TrainingData) -> float:
    return P.evaluate(reg.model_versions[version].pipeline, data.X_test, data.y_test)["rmse"]


def _promoted_retrain(
    settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> tuple[InMemoryRegistry, TrainResult, gate.BaseHoldout]:
    """A first model on the base data, then a retrain with labelled rows promoted over it: the registry,
    the retrain's result and its version's base-holdout record."""
    reg = InMemoryRegistry()
    service.train_once(settings, RetrainRequest(reason="first"), registry=reg)
    monkeypatch.setattr(service, "pull_labelled", lambda *a, **k: labelled())
    r2 = service.train_once(settings, RetrainRequest(reason="drift"), registry=reg)
    assert r2.decision.promoted and reg.champion_version() == r2.version, r2.decision.reason
    record = gate.BaseHoldout.from_json(reg.version(r2.version).tags[gate.BASE_HOLDOUT_TAG])
    assert record is not None and record.rows == r2.rows["test"]
    return reg, r2, record


def test_a_champion_refitted_on_the_base_holdout_is_judged_by_its_error_recorded_before_the_refit(
    settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, r2, record = _promoted_retrain(settings, monkeypatch)
    assert record.trained_on
    assert reg.runs[r2.run_id].record.params["refit_base_holdout"] is True
    # the record is the evaluated fit's base-holdout error; the served refit has seen those rows
    data, _ = candidate(settings)
    assert record.metrics["rmse"] == pytest.approx(r2.metrics["rmse"])
    in_sample = _live_base_rmse(reg, r2.version, data)
    assert in_sample < record.metrics["rmse"] - 0.05  # what an in-sample evaluation would have claimed
    r3 = service.train_once(settings, RetrainRequest(reason="again"), registry=reg)
    d = r3.decision
    assert d.champion_version == r2.version
    assert d.champion["base_holdout_rmse"] == pytest.approx(record.metrics["rmse"])
    assert d.errors["base_holdout"]["champion_rmse"] == pytest.approx(record.metrics["rmse"])
    assert d.champion["recent_labelled_rmse"] > 0  # the recent rows are still evaluated live
    assert "measured before that refit" in d.reason, d.reason


def test_a_champion_refitted_on_another_base_holdout_has_no_base_holdout_error(
    settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, _, record = _promoted_retrain(settings, monkeypatch)
    assert record.trained_on
    other = settings.model_copy(update={"test_size": 0.25})  # another split: other base-holdout rows
    monkeypatch.setattr(service, "pull_labelled", lambda *a, **k: None)  # base holdout decides
    d = service.train_once(other, RetrainRequest(reason="new split"), registry=reg).decision
    assert not d.promoted and "base_holdout_rmse" not in d.champion, d.reason
    assert "neither decides nor guards" in d.reason, d.reason


def test_without_the_base_holdout_in_the_refit_the_champion_is_evaluated_there(
    settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    off = settings.model_copy(update={"refit_on_base_holdout": False})
    reg, r2, record = _promoted_retrain(off, monkeypatch)
    assert not record.trained_on
    d = service.train_once(off, RetrainRequest(reason="again"), registry=reg).decision
    data, _ = candidate(off)
    assert d.champion["base_holdout_rmse"] == pytest.approx(_live_base_rmse(reg, r2.version, data))
    assert "before that refit" not in d.reason
