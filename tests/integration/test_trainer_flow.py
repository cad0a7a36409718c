"""The trainer's real flow against a real ``mlflow server``: train, gate, register, export,
promote, roll back, refuse a malformed CSV, learn from drifted production data.

The tests of this module share one registered model and run in file order (each training
costs CPU, so the first training is a module fixture reused by every test).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from gradeflow_shared import manifest as mf
from gradeflow_shared.contracts import LoggedPrediction, PredictionPage, RetrainRequest
from gradeflow_shared.errors import Conflict, DatasetError
from gradeflow_shared.procs import ServiceProcess, bin_path
from gradeflow_shared.synth import COLUMNS, TARGET, generate, synthetic_spec
from gradeflow_testkit.servers import free_port
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
    assert (
        mv.tags["gate.promoted"] == "true"
        and json.loads(mv.tags["gradeflow.promotions"])[0]["action"] == "gate"
    )
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


def test_worse_data_is_registered_but_not_promoted(env: SimpleNamespace) -> None:
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
    d = r.decision
    assert d.champion_version == 1 and d.evaluated_on == ["base_holdout"]
    assert d.challenger["base_holdout_rmse"] > d.champion["base_holdout_rmse"]  # same data, champion better
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
    tag = env.client.get_registered_model(s.model_name).tags[service.HISTORY_TAG]
    assert [row[1] for row in json.loads(tag)] == ["gate", "promote", "rollback"]


def test_malformed_csv_is_refused_naming_the_column(env: SimpleNamespace) -> None:
    df = generate(200, seed=5)
    df["study_hours_per_week"] = df["study_hours_per_week"].astype(object)
    df.loc[7, "study_hours_per_week"] = "twelve"
    csv = env.tmp / "broken.csv"
    df.to_csv(csv, index=False)
    spec = write_spec(env.tmp / "broken.json", csv=csv)
    before = versions(env)
    s = env.settings.model_copy(update={"dataset": str(spec)})
    with pytest.raises(DatasetError) as err:
        service.train_once(s, RetrainRequest(reason="broken"))
    assert "study_hours_per_week" in err.value.message and "twelve" in err.value.message
    # the CLI: a clear message and a non-zero exit
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


class FakeInference:
    """A real HTTP server answering GET /predictions?labelled=true with contract pages."""

    def __init__(self, rows: list[LoggedPrediction], page_cap: int = 150) -> None:
        import uvicorn
        from fastapi import FastAPI

        app = FastAPI()
        self.requests: list[dict[str, Any]] = []

        @app.get("/predictions")
        def predictions(
            labelled: bool = False, since_id: int | None = None, limit: int = 100
        ) -> PredictionPage:
            self.requests.append({"labelled": labelled, "since_id": since_id, "limit": limit})
            sel = [
                r
                for r in rows
                if (since_id is None or r.id > since_id) and (not labelled or r.actual is not None)
            ]
            page = sel[: min(limit, page_cap)]
            more = len(sel) > len(page)
            return PredictionPage(items=page, next_since_id=page[-1].id if more else None)

        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> FakeInference:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def drifted_inference() -> Iterator[FakeInference]:
    df = generate(400, seed=11, scenario="concept_study_hours")
    now = datetime.now(UTC)
    rows = [
        LoggedPrediction(
            id=i + 1,
            request_id=f"r{i}",
            ts=now,
            model_version=1,
            features={
                k: (None if isinstance(v, float) and np.isnan(v) else v)
                for k, v in rec.items()
                if k != TARGET
            },
            prediction=10.0,
            latency_ms=1.0,
            actual=float(rec[TARGET]),
            feedback_at=now,
        )
        for i, rec in enumerate(df.to_dict(orient="records"))
    ]
    # unlabelled rows are not asked for
    rows.append(
        LoggedPrediction(
            id=401, request_id="u", ts=now, model_version=1, features={}, prediction=1.0, latency_ms=1.0
        )
    )
    with FakeInference(rows) as fake:
        yield fake


def test_drifted_production_data_decides_the_gate(
    env: SimpleNamespace, drifted_inference: FakeInference
) -> None:
    s = env.settings.model_copy(update={"inference_url": f"http://127.0.0.1:{drifted_inference.port}"})
    champion = mio.champion_version(env.client, s.model_name)
    r = service.train_once(s, RetrainRequest(reason="drift detected"))
    assert (
        all(q["labelled"] for q in drifted_inference.requests) and len(drifted_inference.requests) >= 3
    )  # paged
    assert r.rows["production"] == 400 and r.rows["production_holdout"] == 120
    d = r.decision
    assert d.evaluated_on == ["base_holdout", "recent_labelled"]
    assert d.champion_version == champion
    assert {"base_holdout_rmse", "recent_labelled_rmse"} <= set(d.challenger) & set(d.champion)
    # much better on the current distribution, worse on the old base holdout: promoted, recent data decides
    assert d.challenger["recent_labelled_rmse"] < d.champion["recent_labelled_rmse"] * 0.95
    assert d.promoted and "drifted" in d.reason, d.reason
    assert mio.champion_version(env.client, s.model_name) == r.version
    assert current(env)[1].version == r.version
