"""The trainer against a real ``mlflow server``: what the MLflow adapter (``MlflowRegistry``) does.

One real end-to-end training (run, inputs, plots, artifacts, skops model, alias, export), a refused
second version, a promotion rebuilt from MLflow alone and a rollback, the promotion events as
registered-model tags (and a registry written before them), and the CLI refusing a malformed CSV.
The gate / export / history logic itself is unit-tested against the in-memory registry
(``services/trainer/tests/test_flow.py``).

The tests of this module share one registered model and run in file order (each training
costs CPU, so the first training is a module fixture reused by every test).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from gradeflow_shared import manifest as mf
from gradeflow_shared.contracts import RetrainRequest
from gradeflow_shared.errors import Conflict
from gradeflow_shared.procs import ServiceProcess, bin_path
from gradeflow_shared.synth import COLUMNS, TARGET, generate, synthetic_spec
from gradeflow_trainer import history as hist
from gradeflow_trainer import mlflow_io as mio
from gradeflow_trainer import service
from gradeflow_trainer.config import TrainerSettings

pytestmark = pytest.mark.integration


def write_spec(path: Path, csv: Path | None = None, **kw: Any) -> Path:
    if csv is None:
        spec = synthetic_spec(rows=kw.pop("rows", 1500), seed=kw.pop("seed", 0))
        body = json.loads(spec.model_dump_json())
    else:
        body = {
            "name": path.stem,
            "path": str(csv),
            "target": TARGET,
            "target_min": 0,
            "target_max": 20,
            "columns": [c.model_dump() for c in COLUMNS],
        }
    body.update(kw)
    path.write_text(json.dumps(body))
    return path


@pytest.fixture(scope="module")
def env(mlflow_server: ServiceProcess, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("trainer-flow")
    spec = write_spec(tmp / "synthetic.json", rows=1500, name="synthetic-1500")
    settings = TrainerSettings(
        data_dir=tmp / "data",
        mlflow_tracking_uri=mlflow_server.url,  # type: ignore[attr-defined]
        dataset=str(spec),
        model_name=f"it-flow-{uuid.uuid4().hex[:6]}",
        train_search=False,
        inference_url="",
        admin_token="t",
    )
    stages: list[tuple[str, float]] = []
    first = service.train_once(settings, RetrainRequest(reason="first"), lambda s, f: stages.append((s, f)))
    return SimpleNamespace(
        settings=settings, first=first, tmp=tmp, stages=stages, client=mio.client(settings)
    )


def versions(env: SimpleNamespace) -> list[int]:
    return sorted(
        int(v.version) for v in env.client.search_model_versions(f"name='{env.settings.model_name}'")
    )


def current(env: SimpleNamespace) -> tuple[Path, mf.Manifest]:
    cur = mf.read_current(env.settings.models_path)
    assert cur is not None
    return cur


def test_first_training_is_champion_and_exported(env: SimpleNamespace) -> None:
    r, s, cl = env.first, env.settings, env.client
    assert r.version == 1 and r.decision.promoted and r.exported, r.decision
    assert "naive baseline" in r.decision.reason
    assert r.metrics["rmse"] < r.metrics["naive_rmse"]
    assert mio.champion_version(cl, s.model_name) == 1
    fractions = [f for _, f in env.stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    export_dir, m = current(env)
    assert m.version == 1 and m.run_id == r.run_id and m.model_name == s.model_name
    assert set(m.files) == {"model", "onnx", "reference"}
    # the run on the server: params, metrics, inputs, plots, the artifacts a later export needs
    run = cl.get_run(r.run_id)
    assert {"rmse", "mae", "r2", "naive_rmse"} <= set(run.data.metrics)
    assert run.data.params["family"] and run.data.tags["gate.promoted"] == "true"
    assert run.data.params["production_dropped_label_out_of_range"] == "0"  # no INFERENCE_URL: none pulled
    assert run.data.metrics["production_rows_dropped"] == 0
    assert {d.dataset.name for d in run.inputs.dataset_inputs} >= {
        "synthetic-1500-train",
        "synthetic-1500-holdout",
    }
    arts = {a.path for a in cl.list_artifacts(r.run_id, "plots")} | {
        a.path for a in cl.list_artifacts(r.run_id, "export")
    }
    assert "plots/base_holdout_predicted_vs_actual.png" in arts and "plots/base_holdout_residuals.png" in arts
    assert "export/reference.csv" in arts
    mv = cl.get_model_version(s.model_name, "1")
    assert mv.tags["gate.promoted"] == "true" and json.loads(mv.tags[hist.EVENTS_TAG])[0]["action"] == "gate"
    model_tags = cl.get_registered_model(s.model_name).tags
    assert json.loads(model_tags[f"{mio.EVENT_TAG_PREFIX}000001"])["action"] == "gate"
    assert [e.action for e in service.history(s).events(s.model_name)] == ["gate"]
    # the export loads and predicts in a process where mlflow cannot even be imported
    code = (
        "import sys; sys.modules['mlflow'] = None\n"
        "import pandas as pd\n"
        "from gradeflow_trainer.export import load_export\n"
        f"m, pipe = load_export({str(export_dir)!r})\n"
        f"ref = pd.read_csv({str(export_dir / 'reference.csv')!r})\n"
        "p = pipe.predict(ref[m.feature_names])\n"
        "print(m.version, len(p), float(abs(p - ref[m.target]).mean()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    version, n, mae = out.stdout.split()
    assert version == "1" and int(n) > 100 and float(mae) < r.metrics["naive_mae"]


def test_worse_version_is_registered_and_tagged_but_not_promoted(env: SimpleNamespace) -> None:
    rng = np.random.default_rng(3)
    df = generate(600, seed=3)
    df[TARGET] = df[TARGET] + rng.normal(0, 3.0, len(df))  # noisy labels, fewer rows
    csv = env.tmp / "noisy.csv"
    df.to_csv(csv, index=False)
    spec = write_spec(env.tmp / "noisy.json", csv=csv)
    before_dir, _ = current(env)
    s = env.settings.model_copy(update={"dataset": str(spec)})
    r = service.train_once(s, RetrainRequest(reason="worse data"))
    assert r.version == 2 and not r.decision.promoted and not r.exported
    assert r.decision.champion_version == 1  # the champion was loaded back from its kept export
    assert mio.champion_version(env.client, s.model_name) == 1
    assert current(env)[0] == before_dir
    mv = env.client.get_model_version(s.model_name, "2")
    assert mv.tags["gate.promoted"] == "false" and "below the required" in mv.tags["gate.reason"]
    assert env.client.get_run(r.run_id).data.tags["gate.promoted"] == "false"


def test_promote_and_rollback_move_alias_and_export(env: SimpleNamespace) -> None:
    s = env.settings
    v1_dir, _ = current(env)
    out = service.promote(s, 2, reason="manual test")
    assert out["previous_version"] == 1
    assert mio.champion_version(env.client, s.model_name) == 2
    d2, m2 = current(env)
    assert m2.version == 2 and d2 != v1_dir  # v2 was never exported: rebuilt from MLflow (skops)
    mf.verify_files(d2, m2, keys=("model", "onnx", "reference"))
    back = service.rollback(s)
    assert back["version"] == 1 and back["previous_version"] == 2
    assert mio.champion_version(env.client, s.model_name) == 1
    d1, m1 = current(env)
    assert m1.version == 1 and d1 == v1_dir  # the kept export is reused
    with pytest.raises(Conflict):
        service.rollback(s)
    assert mio.champion_version(env.client, s.model_name) == 1
    events = service.history(s).events(s.model_name)
    assert [(e.action, e.version, e.previous_version) for e in events] == [
        ("gate", 1, None),
        ("promote", 2, 1),
        ("rollback", 1, 2),
    ]
    tags = env.client.get_registered_model(s.model_name).tags
    assert [row[1] for row in json.loads(tags[hist.HISTORY_TAG])] == ["gate", "promote", "rollback"]
    assert [e.action for e in mio.MlflowRegistry(s).promotion_events()] == ["gate", "promote", "rollback"]
    assert json.loads(tags[f"{mio.EVENT_TAG_PREFIX}000003"])["action"] == "rollback"


def test_registry_written_before_event_tags_keeps_its_history(env: SimpleNamespace) -> None:
    """A registered model holding only the old compact history tag: its events are read from it and
    moved to one tag each before the next event is appended."""
    s = env.settings.model_copy(update={"model_name": f"it-legacy-{uuid.uuid4().hex[:6]}"})
    env.client.create_registered_model(s.model_name)
    old = [
        hist.make_event(s.model_name, 1, None, "gate", "first"),
        hist.make_event(s.model_name, 2, 1, "promote", "manual"),
    ]
    env.client.set_registered_model_tag(s.model_name, hist.HISTORY_TAG, hist.to_compact(old))
    reg = mio.MlflowRegistry(s)
    assert [(e.action, e.version) for e in reg.promotion_events()] == [("gate", 1), ("promote", 2)]
    reg.add_promotion_event(hist.make_event(s.model_name, 1, 2, "rollback", "back"))
    assert [(e.action, e.version) for e in reg.promotion_events()] == [
        ("gate", 1),
        ("promote", 2),
        ("rollback", 1),
    ]
    tags = env.client.get_registered_model(s.model_name).tags
    assert sorted(k for k in tags if k.startswith(mio.EVENT_TAG_PREFIX))[-1].endswith("000003")


def test_cli_refuses_a_malformed_csv_naming_the_column(env: SimpleNamespace) -> None:
    df = generate(200, seed=5)
    df["study_hours_per_week"] = df["study_hours_per_week"].astype(object)
    df.loc[7, "study_hours_per_week"] = "twelve"
    csv = env.tmp / "broken.csv"
    df.to_csv(csv, index=False)
    spec = write_spec(env.tmp / "broken.json", csv=csv)
    before = versions(env)
    s = env.settings.model_copy(update={"dataset": str(spec)})
    # a clear message and a non-zero exit, nothing registered (train_once itself: test_flow.py)
    proc = subprocess.run(
        [bin_path("gradeflow-trainer"), "train", "--dataset", str(spec)],
        env={**_env(s), "PATH": str(Path(sys.executable).parent)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "study_hours_per_week" in proc.stderr and "INVALID_DATASET" in proc.stderr
    assert versions(env) == before


def _env(s: TrainerSettings) -> dict[str, str]:
    import os

    return {
        **{k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR")},
        "DATA_DIR": str(s.data_dir),
        "MLFLOW_TRACKING_URI": s.mlflow_tracking_uri,
        "MODEL_NAME": s.model_name,
        "DATASET": s.dataset,
        "TRAIN_SEARCH": "false",
        "INFERENCE_URL": "",
        "ADMIN_TOKEN": "t",
    }
