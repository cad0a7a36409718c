"""An MLflow outage during a training, with real processes: the job fails fast with the first error,
``POST /retrain`` is refused while MLflow is down, and after MLflow returns a retrain succeeds and the
run of the failed job is not left RUNNING."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest

from gradeflow_shared.procs import ServiceProcess, bin_path
from gradeflow_shared.synth import synthetic_spec
from gradeflow_testkit.servers import free_port
from gradeflow_testkit.services import start_mlflow

pytestmark = pytest.mark.integration

TOKEN = "it-token-of-the-outage-test"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OPERATIONS = (
    "set experiment",
    "start run",
    "log ",
    "end run",
    "record the gate decision",
    "reading",
    "tagging",
)


def _trainer(tmp: Path, mlflow_url: str, experiment: str) -> ServiceProcess:
    spec = tmp / "synthetic.json"
    spec.write_text(synthetic_spec(rows=20000, seed=0).model_dump_json())  # rows: logging takes seconds
    port = free_port()
    return ServiceProcess(
        name="trainer",
        cmd=[bin_path("gradeflow-trainer")],
        env={
            "DATA_DIR": str(tmp / "data"),
            "MLFLOW_TRACKING_URI": mlflow_url,
            "MODEL_NAME": f"it-outage-{uuid.uuid4().hex[:6]}",
            "EXPERIMENT_NAME": experiment,
            "DATASET": str(spec),
            "TRAIN_SEARCH": "false",
            "TRAIN_ON_START": "false",
            "INFERENCE_URL": "",
            "ADMIN_TOKEN": TOKEN,
            "HOST": "127.0.0.1",
            "TRAINER_PORT": str(port),
        },
        log_path=tmp / "trainer.log",
        health_url=f"http://127.0.0.1:{port}/health",
    )


def _wait_job(c: httpx.Client, job_id: str, timeout: float) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return job  # type: ignore[no-any-return]
        time.sleep(0.2)


def _running_run(mlflow_url: str, experiment: str, c: httpx.Client, job_id: str) -> str | None:
    """The id of the job's MLflow run once it is RUNNING (None when the job ended first)."""
    from mlflow import MlflowClient

    cl = MlflowClient(tracking_uri=mlflow_url)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if c.get(f"/jobs/{job_id}").json()["state"] in ("succeeded", "failed"):
            return None
        exp = cl.get_experiment_by_name(experiment)
        if exp is not None:
            runs = cl.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
            if runs:
                return str(runs[0].info.run_id)
        time.sleep(0.1)
    return None


def test_mlflow_outage_fails_the_job_fast_and_refuses_retrain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # this test's own MLflow client
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    mlflow_svc = start_mlflow(tmp_path / "mlflow")
    url: str = mlflow_svc.url  # type: ignore[attr-defined]
    experiment = f"it-outage-{uuid.uuid4().hex[:6]}"
    trainer = _trainer(tmp_path, url, experiment)
    trainer.start(wait=90)
    try:
        with httpx.Client(base_url=trainer.health_url.rsplit("/", 1)[0], timeout=30) as c:  # type: ignore[union-attr]
            first = c.post("/retrain", json={"reason": "outage"}, headers=AUTH)
            assert first.status_code == 202, first.text
            job_id = first.json()["id"]
            run_id = _running_run(url, experiment, c, job_id)
            assert run_id is not None, ("the job ended before its MLflow run was seen", trainer.tail())

            mlflow_svc.stop(sig=signal.SIGKILL)
            killed = time.monotonic()
            refused = c.post("/retrain", json={"reason": "during the outage"}, headers=AUTH)
            assert refused.status_code == 503, refused.text
            body = refused.json()
            assert body["error_code"] == "UPSTREAM_UNAVAILABLE"
            assert "MLflow" in body["message"] and url in body["message"], body

            job = _wait_job(c, job_id, 90)
            took = time.monotonic() - killed
            assert job["state"] == "failed", (job, trainer.tail())
            assert took < 60, (took, job)
            error = job["error"]
            assert error.startswith(f"UPSTREAM_ERROR: MLflow unreachable at {url}: "), error
            operation = error.split(f"{url}: ", 1)[1]
            assert operation.startswith(OPERATIONS), error
            assert [j["id"] for j in c.get("/jobs").json()] == [job_id]  # nothing started or joined

            # MLflow back on the same port and backend
            mlflow_svc = ServiceProcess(
                name="mlflow",
                cmd=mlflow_svc.cmd,
                env=mlflow_svc.env,
                log_path=mlflow_svc.log_path,
                health_url=mlflow_svc.health_url,
            ).start(wait=120)
            deadline = time.monotonic() + 60
            while True:
                again = c.post("/retrain", json={"reason": "after the outage"}, headers=AUTH)
                if again.status_code != 503 or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            assert again.status_code == 202, again.text
            second = _wait_job(c, again.json()["id"], 400)
            assert second["state"] == "succeeded", (second, trainer.tail())

        from mlflow import MlflowClient

        cl = MlflowClient(tracking_uri=url)
        assert cl.get_run(run_id).info.status == "FAILED"
        assert cl.get_run(second["result"]["run_id"]).info.status == "FINISHED"
    finally:
        trainer.stop()
        mlflow_svc.stop()
