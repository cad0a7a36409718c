"""The trainer as a real process: HTTP API against a real mlflow server; the CLI on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from gradeflow_shared import manifest as mf
from gradeflow_shared.procs import ServiceProcess, bin_path
from gradeflow_shared.synth import synthetic_spec
from gradeflow_testkit.servers import free_port
from gradeflow_testkit.services import start_mlflow

pytestmark = pytest.mark.integration

TOKEN = "it-token-of-the-integration-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _spec(tmp: Path) -> Path:
    path = tmp / "synthetic.json"
    path.write_text(synthetic_spec(rows=1500, seed=0).model_dump_json())
    return path


def _env(tmp: Path, mlflow_url: str) -> dict[str, str]:
    return {
        "DATA_DIR": str(tmp / "data"),
        "MLFLOW_TRACKING_URI": mlflow_url,
        "MODEL_NAME": f"it-svc-{uuid.uuid4().hex[:6]}",
        "DATASET": str(_spec(tmp)),
        "TRAIN_SEARCH": "false",
        "INFERENCE_URL": "",
        "ADMIN_TOKEN": TOKEN,
        "HOST": "127.0.0.1",
    }


def test_http_service_coalesces_retrain_and_trains(mlflow_server: ServiceProcess, tmp_path: Path) -> None:
    port = free_port()
    env = {**_env(tmp_path, mlflow_server.url), "TRAINER_PORT": str(port), "TRAIN_ON_START": "false"}  # type: ignore[attr-defined]
    svc = ServiceProcess(
        name="trainer",
        cmd=[bin_path("gradeflow-trainer")],
        env=env,
        log_path=tmp_path / "trainer.log",
        health_url=f"http://127.0.0.1:{port}/health",
    )
    svc.start(wait=90)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            assert c.post("/retrain", json={}).status_code == 401
            assert c.post("/retrain", json={}, headers={"Authorization": "Bearer nope"}).status_code == 401
            assert c.get("/jobs").json() == []
            first = c.post("/retrain", json={"reason": "it"}, headers=AUTH)
            second = c.post("/retrain", json={"reason": "it again"}, headers=AUTH)
            assert first.status_code == 202 and second.status_code == 200, (first.text, second.text)
            job_id = first.json()["id"]
            assert second.json()["id"] == job_id
            deadline = time.monotonic() + 400
            seen_states = set()
            while True:
                job = c.get(f"/jobs/{job_id}").json()
                seen_states.add(job["state"])
                if job["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert job["state"] == "succeeded", (job, svc.tail())
            assert len(c.get("/jobs").json()) == 1  # never two
            assert job["result"]["version"] == 1 and job["result"]["decision"]["promoted"]
            model = c.get("/model").json()
            assert model["version"] == 1 and model["export"]["version"] == 1
            assert model["mlflow_run_url"].startswith(mlflow_server.url)  # type: ignore[attr-defined]
            assert [e["action"] for e in c.get("/history").json()] == ["gate"]
            r = c.post("/promote", json={"version": 7}, headers=AUTH)
            assert r.status_code == 404 and r.json()["error_code"] == "NOT_FOUND"
            assert c.post("/rollback", headers=AUTH).status_code == 409
            assert c.get("/jobs/unknown").status_code == 404
        log = (tmp_path / "trainer.log").read_text()
        assert f"http://localhost:{port}/docs" in log and "MLflow UI" in log
    finally:
        svc.stop()
    assert (tmp_path / "data" / "trainer" / "jobs.json").is_file()


@pytest.mark.postgres
def test_cli_train_with_mlflow_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    mlflow_svc = start_mlflow(tmp_path / "mlflow", backend=postgres_url)
    try:
        url = mlflow_svc.url  # type: ignore[attr-defined]
        env = _env(tmp_path, url)
        proc = subprocess.run(
            [bin_path("gradeflow-trainer"), "train"],
            env={
                **{k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR")},
                **env,
                "PATH": str(Path(sys.executable).parent),
            },
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert "PROMOTED to champion" in proc.stdout and "[100.0%] done" in proc.stdout
        assert f"MLflow run : {url}/#/experiments/" in proc.stdout
        from mlflow import MlflowClient

        cl = MlflowClient(tracking_uri=url, registry_uri=url)
        assert cl.get_model_version_by_alias(env["MODEL_NAME"], "champion").version == "1"
        cur = mf.read_current(Path(env["DATA_DIR"]) / "models")
        assert cur is not None and cur[1].version == 1
    finally:
        mlflow_svc.stop()
    # the registry really lives in PostgreSQL (the test's own schema)
    import sqlalchemy as sa

    eng = sa.create_engine(postgres_url)
    with eng.connect() as c:
        names = c.execute(sa.text("select name from registered_models")).scalars().all()
        aliases = c.execute(sa.text("select alias, version from registered_model_aliases")).all()
    eng.dispose()
    assert env["MODEL_NAME"] in names and ("champion", 1) in [tuple(a) for a in aliases]


def test_train_on_start_when_registry_has_no_champion(mlflow_server: ServiceProcess, tmp_path: Path) -> None:
    """The lifespan asks the real registry; with no champion it queues one start-up job (fake training)."""
    from fastapi.testclient import TestClient

    from gradeflow_shared.contracts import GateDecision, TrainResult
    from gradeflow_trainer.app import create_app
    from gradeflow_trainer.config import TrainerSettings

    calls: list[str] = []
    called = threading.Event()

    def fake(request, progress):  # type: ignore[no-untyped-def]
        calls.append(request.reason)
        called.set()
        return TrainResult(
            run_id="x",
            version=1,
            model_name="m",
            metrics={},
            decision=GateDecision(promoted=False, reason="fake"),
            exported=False,
        )

    s = TrainerSettings(
        data_dir=tmp_path,
        mlflow_tracking_uri=mlflow_server.url,  # type: ignore[attr-defined]
        model_name=f"it-start-{uuid.uuid4().hex[:6]}",
        train_on_start=True,
        admin_token=TOKEN,
    )
    with TestClient(create_app(s, train_fn=fake)) as c:
        assert called.wait(120), "the start-up job never ran"
        job = c.app.state.runner.active() or c.app.state.runner.list()[0]  # type: ignore[attr-defined]
        c.app.state.runner.wait(job.id, 60)  # type: ignore[attr-defined]
        jobs = c.get("/jobs").json()
    assert len(calls) == 1 and "no champion" in calls[0]
    assert len(jobs) == 1 and jobs[0]["reason"].startswith("start-up")
    assert jobs[0]["state"] == "succeeded"
