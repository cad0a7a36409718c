"""The export's performance baseline: the promoted model's error on the set that justified it."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from gradeflow_shared import manifest as mf
from gradeflow_shared.contracts import RetrainRequest, TrainResult
from gradeflow_shared.synth import COLUMNS, TARGET, generate
from gradeflow_trainer import pipeline as P
from gradeflow_trainer import service
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.labelled import LabelledRows
from gradeflow_trainer.registry import InMemoryRegistry

from .conftest import unit_settings

GOOD = ("gbr", {"n_estimators": 60, "learning_rate": 0.1, "max_depth": 3})


@pytest.fixture
def settings(tmp_path: Path) -> TrainerSettings:
    return unit_settings(tmp_path, rows=1200)


def train(
    settings: TrainerSettings, registry: InMemoryRegistry, monkeypatch: pytest.MonkeyPatch
) -> TrainResult:
    monkeypatch.setattr(service, "fit", functools.partial(P.fit, candidates=[GOOD]))
    return service.train_once(settings, RetrainRequest(reason="unit"), registry=registry)


def served(settings: TrainerSettings) -> mf.Manifest:
    current = mf.read_current(settings.models_path)
    assert current is not None
    return current[1]


def test_baseline_is_the_base_test_error_then_the_recent_holdout_error(
    settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = InMemoryRegistry()
    r1 = train(settings, reg, monkeypatch)
    b1 = served(settings).performance_baseline
    assert b1 is not None and b1.evaluation_set == "base_holdout" and b1.rows == r1.rows["test"]
    assert b1.mae == pytest.approx(r1.metrics["mae"]) and b1.measured_at is not None

    df = generate(400, seed=11, scenario="concept_study_hours")
    prod = LabelledRows(P.prepare_frame(df, COLUMNS), df[TARGET].astype(float), {})
    monkeypatch.setattr(service, "pull_labelled", lambda *a, **k: prod)
    r2 = train(settings, reg, monkeypatch)
    assert r2.decision.promoted and r2.decision.evaluated_on[-1] == "recent_labelled"
    m2 = served(settings)
    b2 = m2.performance_baseline
    assert b2 is not None and b2.evaluation_set == "recent_labelled"
    assert b2.rows == r2.rows["production_holdout"] == 120
    assert b2.mae == pytest.approx(r2.metrics["recent_labelled_mae"]) != pytest.approx(r2.metrics["mae"])
    assert m2.baseline() == b2
    # the rows it was measured on travel with the export (the monitor's drift reference), checksummed
    export_dir = mf.resolve_current(settings.models_path)
    assert export_dir is not None and "reference_recent" in m2.files
    recent = mf.read_reference_records(export_dir, m2, key="reference_recent")
    assert len(recent) == 120 and recent[-1][TARGET] == pytest.approx(float(df[TARGET].iloc[-1]))
    first = next(p for p in mf.list_exports(settings.models_path) if p.name.startswith("v000001-"))
    assert "reference_recent" not in mf.read_manifest(first).files


def test_manifest_without_a_baseline_reads_as_before() -> None:
    raw = (
        '{"model_name": "m", "version": 1, "run_id": "r", "target": "y", "features": [], '
        '"metrics": {"mae": 1.5, "rmse": 2.0, "recent_labelled_mae": 9.0}}'
    )
    m = mf.Manifest.model_validate_json(raw)
    assert m.performance_baseline is None
    b = m.baseline()  # an old export: judged against its base test error, as before
    assert b is not None and (b.evaluation_set, b.mae, b.rmse, b.rows) == ("base_holdout", 1.5, 2.0, None)
    derived = mf.performance_baseline(m.metrics)
    assert derived is not None and (derived.evaluation_set, derived.mae) == ("recent_labelled", 9.0)
    assert mf.performance_baseline({}) is None and mf.performance_baseline({"mae": float("nan")}) is None
