"""The training flow's gate -> export -> alias -> history path (and promote / rollback) against the
in-memory registry: no MLflow server, the export really written to a temporary MODEL_DIR."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from gradeflow_shared import manifest as mf
from gradeflow_shared.contracts import PromotionEvent, RetrainRequest, TrainResult
from gradeflow_shared.errors import Conflict, DatasetError, NotFound
from gradeflow_shared.synth import COLUMNS, TARGET, generate
from gradeflow_trainer import history as hist
from gradeflow_trainer import pipeline as P
from gradeflow_trainer import promotion, service
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.labelled import LabelledRows
from gradeflow_trainer.registry import InMemoryRegistry

from .conftest import unit_settings

GOOD = ("gbr", {"n_estimators": 60, "learning_rate": 0.1, "max_depth": 3})
POOR = ("ridge", {"alpha": 1e7})  # predicts about the mean: far worse than GOOD on the same holdout


@pytest.fixture
def settings(tmp_path: Path) -> TrainerSettings:
    return unit_settings(tmp_path, rows=1200)


def train(
    settings: TrainerSettings,
    registry: InMemoryRegistry,
    monkeypatch: pytest.MonkeyPatch,
    candidate: tuple[str, dict[str, Any]] = GOOD,
    stages: list[tuple[str, float]] | None = None,
) -> TrainResult:
    monkeypatch.setattr(service, "fit", functools.partial(P.fit, candidates=[candidate]))
    stages = [] if stages is None else stages
    result = service.train_once(
        settings, RetrainRequest(reason="unit"), lambda s, f: stages.append((s, f)), registry=registry
    )
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    return result


def current_version(settings: TrainerSettings) -> tuple[Path, int]:
    cur = mf.read_current(settings.models_path)
    assert cur is not None
    return cur[0], cur[1].version


def actions(settings: TrainerSettings, registry: InMemoryRegistry) -> list[tuple[str, int, int | None]]:
    """The events of the source of truth, checked against every derived view."""
    events = registry.promotion_events()
    rows = [(e.action, e.version, e.previous_version) for e in events]
    assert [(e.action, e.version, e.previous_version) for e in service.history(settings).events()] == rows
    compact = json.loads(registry.model_tags[hist.HISTORY_TAG]) if events else []
    assert [(r[1], r[2], r[3]) for r in compact] == rows
    for v in {e.version for e in events}:
        tag = json.loads(registry.version(v).tags[hist.EVENTS_TAG])
        assert [(t["action"], t["version"]) for t in tag] == [(a, n) for a, n, _ in rows if n == v]
    return rows


def test_first_model_beats_the_naive_baseline_and_is_exported(
    settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = InMemoryRegistry()
    r = train(settings, reg, monkeypatch)
    assert r.version == 1 and r.decision.promoted and r.exported, r.decision
    assert "naive baseline" in r.decision.reason and r.metrics["rmse"] < r.metrics["naive_rmse"]
    assert reg.champion_version() == 1
    export_dir, version = current_version(settings)
    assert version == 1 and str(export_dir) == r.export_dir
    assert actions(settings, reg) == [("gate", 1, None)]
    tags = reg.version(1).tags
    assert tags["gate.promoted"] == "true" and json.loads(tags["gate.decision"])["promoted"] is True
    run = reg.runs[r.run_id]
    assert run.tags["gate.promoted"] == "true" and run.dicts["gate/decision.json"]["challenger_version"] == 1
    assert run.record.params["rows_production"] == 0 and {"rmse", "naive_rmse"} <= set(run.record.metrics)
    assert set(run.artifacts) == {"reference.csv", "columns.json", "meta.json"}


def test_worse_challenger_is_refused_and_nothing_is_exported(
    settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = InMemoryRegistry()
    train(settings, reg, monkeypatch)
    before = current_version(settings)
    r = train(settings, reg, monkeypatch, candidate=POOR)
    d = r.decision
    assert r.version == 2 and not d.promoted and not r.exported and r.export_dir is None
    assert d.champion_version == 1 and "below the required" in d.reason
    assert d.challenger["base_holdout_rmse"] > d.champion["base_holdout_rmse"]
    assert reg.champion_version() == 1 and current_version(settings) == before
    assert len(mf.list_exports(settings.models_path)) == 1
    assert actions(settings, reg) == [("gate", 1, None)]
    assert reg.version(2).tags["gate.promoted"] == "false" and hist.EVENTS_TAG not in reg.version(2).tags
    assert reg.runs[r.run_id].tags["gate.promoted"] == "false"


def test_failed_export_does_not_promote(settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = InMemoryRegistry()
    monkeypatch.setattr(P, "ONNX_TOLERANCE", -1.0)  # every ONNX check fails
    r = train(settings, reg, monkeypatch)
    assert not r.decision.promoted and "export failed" in r.decision.reason
    assert reg.champion_version() is None and mf.read_current(settings.models_path) is None
    assert actions(settings, reg) == []


def test_promote_and_rollback_move_alias_export_and_history(
    settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = InMemoryRegistry()
    train(settings, reg, monkeypatch)
    v1_dir, _ = current_version(settings)
    train(settings, reg, monkeypatch, candidate=POOR)
    out = service.promote(settings, 2, reason="manual test", registry=reg)
    assert out["previous_version"] == 1 and out["event"]["action"] == "promote"
    assert reg.champion_version() == 2
    v2_dir, version = current_version(settings)
    assert version == 2 and v2_dir != v1_dir  # never exported before: rebuilt from the registry
    mf.verify_files(v2_dir, mf.read_manifest(v2_dir), keys=("model", "onnx", "reference"))
    back = service.rollback(settings, registry=reg)
    assert back["version"] == 1 and back["previous_version"] == 2
    assert reg.champion_version() == 1 and current_version(settings) == (v1_dir, 1)  # the kept export
    with pytest.raises(Conflict):
        service.rollback(settings, registry=reg)
    with pytest.raises(NotFound):
        service.promote(settings, 99, registry=reg)
    assert reg.champion_version() == 1
    assert actions(settings, reg) == [("gate", 1, None), ("promote", 2, 1), ("rollback", 1, 2)]


def test_history_file_is_rebuilt_from_the_registry(
    settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = InMemoryRegistry()
    train(settings, reg, monkeypatch)
    path = service.history(settings).path
    path.unlink()
    promotion.reconcile(settings, reg)  # rewrites the views at start-up
    assert [e.action for e in service.history(settings).events()] == ["gate"]


def test_drifted_recent_labelled_data_decides_the_gate(
    settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = InMemoryRegistry()
    train(settings, reg, monkeypatch)
    df = generate(400, seed=11, scenario="concept_study_hours")
    dropped = {"label_out_of_range": 3, "request_id_duplicate": 1}
    prod = LabelledRows(P.prepare_frame(df, COLUMNS), df[TARGET].astype(float), dropped)
    monkeypatch.setattr(service, "pull_labelled", lambda *a, **k: prod)
    stages: list[tuple[str, float]] = []
    r = train(settings, reg, monkeypatch, stages=stages)
    assert r.rows["production"] == 400 and r.rows["production_holdout"] == 120
    d = r.decision
    assert d.evaluated_on == ["base_holdout", "recent_labelled"] and d.champion_version == 1
    assert {"base_holdout_rmse", "recent_labelled_rmse"} <= set(d.challenger) & set(d.champion)
    # much better on the current distribution, worse on the old base holdout: promoted, recent data decides
    assert d.challenger["recent_labelled_rmse"] < d.champion["recent_labelled_rmse"] * 0.95
    assert d.promoted and "drifted" in d.reason, d.reason
    # decided on evidence: both models row by row on the same 120 recent rows, interval below 0
    assert d.method == "paired-bootstrap" and d.rows == 120 and d.drifted is True
    assert d.effect_high is not None and d.effect_high < 0 and d.labels_needed is None
    assert d.errors["base_holdout"]["champion_rmse"] == d.champion["base_holdout_rmse"]
    assert d.errors["recent_labelled"]["challenger_rmse"] == d.challenger["recent_labelled_rmse"]
    tags = reg.version(2).tags
    assert tags["gate.rows"] == "120" and json.loads(tags["gate.errors"]) == d.errors
    assert reg.runs[r.run_id].dicts["gate/decision.json"]["effect_high"] == d.effect_high
    assert reg.champion_version() == 2 and current_version(settings)[1] == 2
    # the refused rows are counted in the result, the run's params and metrics
    assert r.rows["production_dropped"] == 4 and r.rows["production_dropped_label_out_of_range"] == 3
    record = reg.runs[r.run_id].record
    assert (
        record.params["rows_production"] == 400 and record.params["production_dropped_feature_invalid"] == 0
    )
    assert record.params["production_dropped_request_id_duplicate"] == 1
    assert record.metrics["production_rows_dropped"] == 4
    notes = [s for s, _ in stages if s.startswith("production data")]
    assert notes == [
        "production data: 400 labelled rows used, 4 dropped (label_out_of_range 3, request_id_duplicate 1)"
    ]


def test_malformed_dataset_is_refused_before_anything_is_registered(
    settings: TrainerSettings, tmp_path: Path
) -> None:
    df = generate(200, seed=5)
    df["study_hours_per_week"] = df["study_hours_per_week"].astype(object)
    df.loc[7, "study_hours_per_week"] = "twelve"
    csv = tmp_path / "broken.csv"
    df.to_csv(csv, index=False)
    spec = tmp_path / "broken.json"
    body = {
        "name": "broken",
        "path": str(csv),
        "target": TARGET,
        "columns": [c.model_dump() for c in COLUMNS],
    }
    spec.write_text(json.dumps(body))
    reg = InMemoryRegistry()
    with pytest.raises(DatasetError) as err:
        service.train_once(settings, RetrainRequest(reason="broken"), dataset=str(spec), registry=reg)
    assert "study_hours_per_week" in err.value.message and "twelve" in err.value.message
    assert reg.model_versions == {} and reg.runs == {}


def test_a_long_event_fits_one_registry_tag() -> None:
    from gradeflow_trainer.mlflow_io import _event_tag
    from gradeflow_trainer.registry import TAG_MAX

    event = hist.make_event("m", 3, 2, "gate", "why " * 3000)
    text = _event_tag(event)
    assert len(text) <= TAG_MAX
    back = PromotionEvent.model_validate_json(text)
    assert back.version == 3 and back.reason.startswith("why why") and back.reason.endswith("...")
    short = hist.make_event("m", 3, 2, "gate", "short")
    assert PromotionEvent.model_validate_json(_event_tag(short)) == short
