"""The trainer API in-process: auth, job coalescing, job errors, promote/rollback mapping."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gradeflow_shared.contracts import GateDecision, RetrainRequest, TrainResult
from gradeflow_shared.errors import ConfigError, Conflict, DatasetError, NotFound
from gradeflow_trainer import app as app_module
from gradeflow_trainer.app import create_app
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.jobs import JobRunner

TOKEN = "s3cret-token-of-the-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def settings(tmp: Path, **kw: Any) -> TrainerSettings:
    return TrainerSettings(
        data_dir=tmp,
        admin_token=TOKEN,
        train_on_start=False,
        inference_url="",
        mlflow_tracking_uri="http://127.0.0.1:9",
        **kw,
    )


WAIT = 60.0  # generous bound of every event wait: never reached unless something is broken


class SlowTrain:
    """A fake training that signals when it runs, blocks until released and counts its calls.

    It asserts nothing itself (it runs on the runner's thread): a release that never comes makes
    the job fail with the cause, which the test sees in the job's state."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls: list[RetrainRequest] = []

    def __call__(self, request: RetrainRequest, progress: Any) -> TrainResult:
        self.calls.append(request)
        progress("fit", 0.5)
        self.started.set()
        if not self.release.wait(WAIT):
            raise TimeoutError("the test never released the training")
        return TrainResult(
            run_id="r1",
            version=len(self.calls),
            model_name="m",
            metrics={"rmse": 1.0},
            decision=GateDecision(promoted=True, reason="test"),
            exported=True,
        )


def finished(client: TestClient, job_id: str) -> dict[str, Any]:
    """The job once it has ended (the runner's own condition, not a sleep loop), as the API answers it."""
    runner: JobRunner = client.app.state.runner  # type: ignore[attr-defined]
    runner.wait(job_id, WAIT)
    return client.get(f"/jobs/{job_id}").json()  # type: ignore[no-any-return]


def test_admin_endpoints_refuse_missing_or_wrong_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = SlowTrain()
    calls: list[str] = []
    monkeypatch.setattr(app_module.service, "promote", lambda *a, **k: calls.append("promote"))
    monkeypatch.setattr(app_module.service, "rollback", lambda *a, **k: calls.append("rollback"))
    with TestClient(create_app(settings(tmp_path), train_fn=train)) as c:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
        ):
            for path, body in (("/retrain", {}), ("/promote", {"version": 1}), ("/rollback", {})):
                r = c.post(path, json=body, headers=headers)
                assert r.status_code == 401, (path, headers, r.text)
                assert r.json()["error_code"] == "UNAUTHORIZED"
                assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/jobs").json() == []
        assert calls == [] and train.calls == []
        assert c.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("token", ["", "dev-token", "change-me", "Change-Me", "short-token"])
def test_placeholder_or_short_admin_token_is_refused_at_start(tmp_path: Path, token: str) -> None:
    s = settings(tmp_path).model_copy(update={"admin_token": token, "environment": "development"})
    with pytest.raises(ConfigError, match="ADMIN_TOKEN"):
        create_app(s, train_fn=SlowTrain())


def test_retrain_coalesces_while_a_job_is_active(tmp_path: Path) -> None:
    train = SlowTrain()
    with TestClient(create_app(settings(tmp_path), train_fn=train)) as c:
        first = c.post("/retrain", json={"reason": "drift", "monitor_run_id": "mr-1"}, headers=AUTH)
        assert first.status_code == 202
        job = first.json()
        assert job["state"] in ("queued", "running") and job["reason"] == "drift"
        for _ in range(5):
            again = c.post("/retrain", json={"reason": "again"}, headers=AUTH)
            assert again.status_code == 200
            assert again.json()["id"] == job["id"]
        assert train.started.wait(WAIT)
        running = c.get(f"/jobs/{job['id']}").json()
        assert running["state"] == "running", running
        assert running["stage"] == "fit" and running["progress"] == pytest.approx(0.5)
        train.release.set()
        done = finished(c, job["id"])
        assert done["state"] == "succeeded", done
        assert done["progress"] == 1.0 and done["result"]["version"] == 1
        assert len(train.calls) == 1 and train.calls[0].monitor_run_id == "mr-1"
        # once finished, a new trigger starts a new job
        nxt = c.post("/retrain", headers=AUTH)
        assert nxt.status_code == 202 and nxt.json()["id"] != job["id"]
        assert finished(c, nxt.json()["id"])["state"] == "succeeded"
        assert [j["id"] for j in c.get("/jobs").json()] == [nxt.json()["id"], job["id"]]
        r = c.get("/jobs/nope")
        assert r.status_code == 404 and r.json()["error_code"] == "NOT_FOUND"


def test_failed_job_carries_the_clear_error(tmp_path: Path) -> None:
    def bad(request: RetrainRequest, progress: Any) -> TrainResult:
        raise DatasetError("dataset 'x': numeric column 'age' has 1 non-numeric value(s)")

    with TestClient(create_app(settings(tmp_path), train_fn=bad)) as c:
        job = c.post("/retrain", headers=AUTH).json()
        done = finished(c, job["id"])
        assert done["state"] == "failed"
        assert "INVALID_DATASET" in done["error"] and "'age'" in done["error"]


def test_promote_and_rollback_map_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def promote(settings: TrainerSettings, version: int, reason: str, **kw: Any) -> dict[str, Any]:
        if version == 99:
            raise NotFound("model 'm' has no version 99")
        return {
            "model_name": "m",
            "version": version,
            "previous_version": None,
            "action": reason,
            "export_dir": "/x",
            "event": {
                "at": "2026-01-01T00:00:00Z",
                "model_name": "m",
                "version": version,
                "previous_version": None,
                "action": "promote",
                "reason": reason,
            },
        }

    def rollback(settings: TrainerSettings, reason: str, **kw: Any) -> dict[str, Any]:
        raise Conflict("no previous champion to roll back to")

    monkeypatch.setattr(app_module.service, "promote", promote)
    monkeypatch.setattr(app_module.service, "rollback", rollback)
    with TestClient(create_app(settings(tmp_path), train_fn=SlowTrain())) as c:
        body = c.post("/promote", json={"version": 3}, headers=AUTH).json()
        assert body["version"] == 3 and body["action"] == "manual promotion"
        assert c.post("/promote", json={"version": 99}, headers=AUTH).status_code == 404
        assert c.post("/promote", json={"version": "x"}, headers=AUTH).status_code == 422
        r = c.post("/rollback", headers=AUTH)
        assert r.status_code == 409 and r.json()["error_code"] == "CONFLICT"


def test_jobs_persist_and_interrupted_jobs_fail_on_restart(tmp_path: Path) -> None:
    state = tmp_path / "jobs.json"
    train = SlowTrain()
    runner = JobRunner(train, state_file=state)
    runner.start()
    job, created = runner.submit(RetrainRequest(reason="r"))
    assert created
    assert train.started.wait(WAIT)
    # a new runner reading the same file (a restart) marks the running job as interrupted
    again = JobRunner(SlowTrain(), state_file=state)
    old = again.get(job.id)
    assert old is not None and old.state == "failed" and "interrupted" in (old.error or "")
    train.release.set()
    done = runner.wait(job.id, WAIT)
    assert done is not None and done.state == "succeeded"
    runner.stop()
