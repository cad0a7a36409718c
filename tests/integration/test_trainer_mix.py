"""The training mix against a real ``mlflow server``: a retrain on shifted labelled production rows
records the mix it chose (and every candidate's validation error) in the MLflow run, and the chosen
model (``residual_boost`` here: boosting continued on production rows) exports and serves through
ONNX like any other."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from gradeflow_shared import manifest as mf
from gradeflow_shared.contracts import RetrainRequest
from gradeflow_shared.procs import ServiceProcess
from gradeflow_shared.synth import COLUMNS, TARGET, generate, synthetic_spec
from gradeflow_trainer import mlflow_io as mio
from gradeflow_trainer import pipeline as P
from gradeflow_trainer import service
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.labelled import LabelledRows

pytestmark = pytest.mark.integration


def test_a_retrain_on_shifted_rows_records_its_mix_in_mlflow(
    mlflow_server: ServiceProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "synthetic.json"
    spec.write_text(json.dumps(json.loads(synthetic_spec(rows=800, seed=0).model_dump_json())))
    settings = TrainerSettings(
        data_dir=tmp_path / "data",
        mlflow_tracking_uri=mlflow_server.url,  # type: ignore[attr-defined]
        dataset=str(spec),
        model_name=f"it-mix-{uuid.uuid4().hex[:6]}",
        train_search=False,
        inference_url="",
        admin_token="t",
    )
    first = service.train_once(settings, RetrainRequest(reason="first"))
    assert first.mix is None and first.decision.promoted
    df = generate(300, seed=11, scenario="concept_study_hours")
    prod = LabelledRows(P.prepare_frame(df, COLUMNS), df[TARGET].astype(float))
    monkeypatch.setattr(service, "pull_labelled", lambda *a, **k: prod)
    r = service.train_once(settings, RetrainRequest(reason="drift"))
    assert r.mix is not None and r.mix.selected
    scores = {c.name: c.val_mae for c in r.mix.candidates}
    assert r.mix.chosen != "weight_1" and scores[r.mix.chosen] < scores["weight_1"]  # the shift is learnt
    run = mio.client(settings).get_run(r.run_id)
    assert run.data.params["mix"] == r.mix.chosen and run.data.params["mix_selected"] == "True"
    assert (
        run.data.tags["gradeflow.mix"] == r.mix.chosen
        and r.mix.chosen in run.data.tags["gradeflow.mix_reason"]
    )
    for name, mae in scores.items():
        assert run.data.metrics[f"mix_{name}_val_mae"] == pytest.approx(mae)
    # the challenger is better on the recent rows and is promoted: its export serves through ONNX
    assert r.decision.promoted, r.decision.reason
    current = mf.read_current(settings.models_path)
    assert current is not None and current[1].version == r.version
    assert (current[0] / "model.onnx").is_file()
