"""Fail fast when MLflow is down: bounded client requests, the first error named, runs of failed
jobs ended FAILED, ``POST /retrain`` refused with 503."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from fastapi.testclient import TestClient

from gradeflow_shared.errors import ServiceUnavailable, UpstreamError, error_from_body
from gradeflow_testkit.servers import free_port
from gradeflow_trainer import mlflow_io as mio
from gradeflow_trainer.app import create_app
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.registry import InMemoryRegistry, RunRecord

TOKEN = "s3cret-token-of-the-failfast-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HTTP_VARS = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
)


@pytest.fixture(autouse=True)
def _restore_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every MLflow variable a test sets is undone afterwards; no probe verdict leaks between tests."""
    for name in HTTP_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(mio, "_probes", {})


def settings(tmp: Path, **kw: Any) -> TrainerSettings:
    base: dict[str, Any] = {
        "data_dir": tmp,
        "admin_token": TOKEN,
        "train_on_start": False,
        "inference_url": "",
        "mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}",  # nothing listens there
    }
    return TrainerSettings(**{**base, **kw})


def record(tmp: Path) -> RunRecord:
    X = pd.DataFrame({"a": [1.0, 2.0, 3.0]})
    (tmp / "art").mkdir(exist_ok=True)
    return RunRecord(
        run_name="r",
        target="y",
        pipeline=None,
        tags={},
        params={},
        metrics={},
        cv_rmse={},
        inputs=[],
        y_holdout=np.zeros(3),
        pred_holdout=np.zeros(3),
        artifacts_dir=tmp / "art",
        input_example=X,
    )


# ------------------------------------------------------------------ settings -> MLflow's variables
def test_http_settings_become_mlflow_variables_read_at_request_time(tmp_path: Path) -> None:
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    s = settings(tmp_path, mlflow_http_timeout=7, mlflow_http_retries=1, mlflow_http_backoff=0)
    mio.MlflowRegistry(s)  # what the service builds before any MLflow call
    assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 7
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 1
    assert MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == 0


def test_http_settings_are_bounded_by_default() -> None:
    s = TrainerSettings(admin_token=TOKEN)
    env = mio.http_env(s)
    assert int(env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) <= 3  # MLflow's own default is 7
    assert int(env["MLFLOW_HTTP_REQUEST_TIMEOUT"]) <= 30  # MLflow's own default is 120


# ------------------------------------------------------------------ the first error, named
def test_unreachable_mlflow_fails_fast_naming_the_first_operation(tmp_path: Path) -> None:
    s = settings(tmp_path)
    reg = mio.MlflowRegistry(s)
    t0 = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        reg.log_candidate(record(tmp_path))
    assert time.monotonic() - t0 < 30
    msg = info.value.message
    assert msg.startswith(f"MLflow unreachable at {s.mlflow_tracking_uri}: set experiment "), msg
    assert "ConnectionError" in msg


class FakeMlflow:
    """The fluent calls of ``log_candidate`` up to a failing one, and a failing ``end_run``."""

    def __init__(self) -> None:
        self.run = SimpleNamespace(info=SimpleNamespace(run_id="run-7"))
        self.active: Any = None
        self.ended: list[str] = []

    def start_run(self, run_name: str) -> Any:
        self.active = self.run
        return self.run

    def active_run(self) -> Any:
        return self.active

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.exceptions import MlflowException

        try:
            raise requests.ConnectionError("Connection refused")
        except requests.ConnectionError:
            raise MlflowException("API request to /runs/set-tag failed with exception refused")  # noqa: B904 - as MLflow does

    def end_run(self, status: str = "FINISHED") -> None:
        from mlflow.exceptions import MlflowException

        self.active = None
        self.ended.append(status)
        raise MlflowException("API request to /runs/update failed: a LATER error")


class FakeClient:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.terminated: list[tuple[str, str]] = []

    def set_terminated(self, run_id: str, status: str) -> None:
        from mlflow.exceptions import MlflowException

        if self.fail:
            raise MlflowException("API request failed: still down")
        self.terminated.append((run_id, status))


def test_first_error_kept_when_ending_the_run_fails_too_and_the_run_is_ended_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    fake = FakeMlflow()
    monkeypatch.setattr(mlflow, "set_experiment", lambda name: None)
    for name in ("start_run", "active_run", "set_tags", "end_run"):
        monkeypatch.setattr(mlflow, name, getattr(fake, name))
    reg = mio.MlflowRegistry(settings(tmp_path))
    reg.client = FakeClient(fail=True)

    with pytest.raises(UpstreamError) as info:
        reg.log_candidate(record(tmp_path))
    msg = info.value.message
    assert ": log run tags, params and metrics: ConnectionError: " in msg and "MLflow unreachable at" in msg
    assert "LATER" not in msg
    assert fake.ended == ["FAILED"]  # one attempt, not a second long cycle
    assert reg.open_runs() == ["run-7"]

    # MLflow still down at the next training: that training fails on ending the old run, which stays listed
    with pytest.raises(UpstreamError, match="end run run-7 of an earlier failed job"):
        reg.log_candidate(record(tmp_path))
    assert reg.open_runs() == ["run-7"]

    # MLflow back: the next training ends the old run FAILED first
    reg.client = FakeClient(fail=False)
    monkeypatch.setattr(
        mlflow, "set_experiment", lambda name: (_ for _ in ()).throw(RuntimeError("stop here"))
    )
    with pytest.raises(RuntimeError, match="stop here"):
        reg.log_candidate(record(tmp_path))
    assert reg.client.terminated == [("run-7", "FAILED")]
    assert reg.open_runs() == []


# ------------------------------------------------------------------ POST /retrain refused while down
class DownRegistry(InMemoryRegistry):
    def check_available(self) -> None:
        raise ServiceUnavailable("MLflow unavailable at http://mlflow.test: down")


def test_retrain_refused_with_503_when_the_registry_is_down(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path), registry=DownRegistry())) as c:
        assert c.post("/retrain", json={}).status_code == 401  # auth first, no probe
        r = c.post("/retrain", json={"reason": "x"}, headers=AUTH)
        assert r.status_code == 503
        assert r.json()["error_code"] == "UPSTREAM_UNAVAILABLE"
        assert c.get("/jobs").json() == []


def test_retrain_refused_by_the_real_probe_of_an_unreachable_mlflow(tmp_path: Path) -> None:
    s = settings(tmp_path)
    with TestClient(create_app(s)) as c:
        t0 = time.monotonic()
        r = c.post("/retrain", json={"reason": "x"}, headers=AUTH)
        assert time.monotonic() - t0 < 10
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["error_code"] == "UPSTREAM_UNAVAILABLE"
        assert (
            f"MLflow unavailable at {s.mlflow_tracking_uri} (GET /health: ConnectionError" in body["message"]
        )
        assert c.get("/jobs").json() == []


def test_retrain_accepted_when_the_registry_answers(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path), registry=InMemoryRegistry())) as c:
        r = c.post("/retrain", json={"reason": "x"}, headers=AUTH)
        assert r.status_code == 202, r.text


def test_probe_verdict_is_cached_for_a_few_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def probe(uri: str) -> str | None:
        calls.append(uri)
        return "GET /health: ConnectionError: refused"

    monkeypatch.setattr(mio, "_probe", probe)
    s = settings(tmp_path)
    for _ in range(3):
        with pytest.raises(ServiceUnavailable):
            mio.check_available(s)
    assert len(calls) == 1
    monkeypatch.setattr(mio, "PROBE_TTL", -1.0)
    with pytest.raises(ServiceUnavailable):
        mio.check_available(s)
    assert len(calls) == 2


def test_service_unavailable_round_trips_through_the_http_client() -> None:
    err = error_from_body(503, ServiceUnavailable("MLflow unavailable at http://x").to_dict())
    assert isinstance(err, ServiceUnavailable) and isinstance(err, UpstreamError)
    assert err.status_code == 503 and err.error_code == "UPSTREAM_UNAVAILABLE"


def test_openapi_documents_the_503_of_retrain(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path), registry=InMemoryRegistry())) as c:
        spec = c.get("/openapi.json").json()
    assert "503" in spec["paths"]["/retrain"]["post"]["responses"]


# ------------------------------------------------------------------ the gate: a registry failure fails the job
class ChampionUnreadable(InMemoryRegistry):
    def load_model(self, version: int, tmp: Path) -> Any:
        raise UpstreamError(f"MLflow unreachable at http://mlflow.test: reading {self.model_name} v{version}")


def test_registry_failure_while_loading_the_champion_is_the_jobs_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    from gradeflow_shared.contracts import RetrainRequest
    from gradeflow_shared.synth import synthetic_spec
    from gradeflow_trainer import gate, service
    from gradeflow_trainer import pipeline as P

    spec = tmp_path / "synthetic.json"
    spec.write_text(synthetic_spec(rows=600, seed=0).model_dump_json())
    s = settings(tmp_path, data_dir=tmp_path / "data", dataset=str(spec), train_search=False)
    monkeypatch.setattr(service, "fit", functools.partial(P.fit, candidates=[("ridge", {"alpha": 1.0})]))
    reg = ChampionUnreadable()
    assert service.train_once(s, RetrainRequest(reason="first"), registry=reg).decision.promoted
    monkeypatch.setattr(service, "kept_export", lambda *a: None)  # the champion must come from MLflow
    with pytest.raises(UpstreamError, match="reading student-grade v1"):
        service.train_once(s, RetrainRequest(reason="second"), registry=reg)
    tags = reg.model_versions[2].tags  # no verdict recorded on an error of the registry
    assert not [k for k in tags if k.startswith("gate.")] and set(tags) == {gate.BASE_HOLDOUT_TAG}


# ------------------------------------------------------------------ the settings really bound the client
def test_an_mlflow_answering_500_costs_exactly_the_configured_attempts(tmp_path: Path) -> None:
    """The client the trainer uses retries MLFLOW_HTTP_RETRIES times, then names the operation."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits: list[str] = []

    class Always500(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error_code": "INTERNAL_ERROR", "message": "boom"}')

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Always500)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        s = settings(tmp_path, mlflow_tracking_uri=uri, mlflow_http_retries=1, mlflow_http_backoff=0)
        t0 = time.monotonic()
        with pytest.raises(UpstreamError) as info:
            mio.MlflowRegistry(s).version(123456)
        assert time.monotonic() - t0 < 10
    finally:
        server.shutdown()
        server.server_close()
    assert len(hits) == 2  # one request + MLFLOW_HTTP_RETRIES=1 retry (MLflow's default: 1 + 7)
    assert info.value.message.startswith(f"MLflow at {uri} failed: reading student-grade v123456: ")
