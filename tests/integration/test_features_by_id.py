"""Predicting by student id with real processes: ``gradeflow-inference`` on a free port over a real Feast
store, fed by the ``gradeflow-features ingest`` CLI (real HTTP, real SQLite online store)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gradeflow_shared.procs import ServiceProcess, bin_path
from gradeflow_testkit import exports
from gradeflow_testkit.feature_store import ADMIN_TOKEN, SeededStore, reading_time, seeded_store
from gradeflow_testkit.servers import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> SeededStore:
    return seeded_store(tmp_path_factory.mktemp("by-id-store"), students=40)


@pytest.fixture(scope="module")
def inference(tmp_path_factory: pytest.TempPathFactory, seeded: SeededStore) -> Iterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp("by-id-inference")
    fitted = exports.fit_and_export(tmp)
    exports.republish(tmp / "models", fitted.exports["rf"], 1)
    port = free_port()
    svc = ServiceProcess(
        name="inference",
        cmd=[bin_path("gradeflow-inference")],
        env={
            "DATA_DIR": str(tmp / "data"),
            "MODEL_DIR": str(tmp / "models"),
            "FEATURE_STORE_DIR": str(seeded.settings.feature_store_path),
            "INFERENCE_PORT": str(port),
            "HOST": "127.0.0.1",
            "ADMIN_TOKEN": ADMIN_TOKEN,
        },
        log_path=tmp / "logs" / "inference.log",
        health_url=f"http://127.0.0.1:{port}/health",
    )
    svc.start(wait=60)
    svc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        yield svc
    finally:
        svc.stop()


def _predict(url: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{url}/predict", json=body, timeout=30)


def _ingest(readings: Path, url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """``gradeflow-features ingest`` as a user runs it (the token from the environment)."""
    env = {"ADMIN_TOKEN": ADMIN_TOKEN, "DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"}
    cmd = [bin_path("gradeflow-features"), "ingest", str(readings), "--url", url]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_by_id_over_http_and_readings_from_the_cli(
    inference: ServiceProcess, seeded: SeededStore, tmp_path: Path
) -> None:
    url = inference.url  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/ready", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, inference.tail(40)
        time.sleep(0.2)
    sid = seeded.ids[2]
    stored = seeded.online([sid]).iloc[0].to_dict()
    model_features = [f["name"] for f in httpx.get(f"{url}/model", timeout=10).json()["features"]]
    full = {f: stored[f] for f in model_features}
    want = _predict(url, full).json()["predictions"][0]["prediction"]
    r = _predict(url, {"student_id": sid})
    assert r.status_code == 200, r.text
    before = r.json()["predictions"][0]["prediction"]
    assert before == pytest.approx(want, abs=1e-6)
    r = _predict(url, {"student_ids": ["S-00001", "not-a-student"]})
    assert r.status_code == 404 and "not-a-student" in r.json()["message"]

    # a week of bad readings through the CLI, as JSON lines
    readings = tmp_path / "readings.jsonl"
    rows = [
        {"student_id": sid, "event_timestamp": reading_time(0.5), "attendance_pct": 30.0, "absences": 20},
        {"student_id": sid, "event_timestamp": reading_time(0), "study_hours_per_week": 0.0},
    ]
    readings.write_text("\n".join(json.dumps(r) for r in rows))
    out = _ingest(readings, url, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 readings accepted" in out.stdout

    deadline = time.monotonic() + 90
    after = before
    while abs(after - before) < 1e-6:
        assert time.monotonic() < deadline, inference.tail(60)
        time.sleep(0.3)
        after = _predict(url, {"student_id": sid}).json()["predictions"][0]["prediction"]
    assert after < before
    # the two readings carry different features: pushed one after the other, the prediction can move
    # after the first while the second is still pending
    deadline = time.monotonic() + 60
    while "inference_feature_readings_pending 0.0" not in (
        metrics := httpx.get(f"{url}/metrics", timeout=10).text
    ):
        assert time.monotonic() < deadline, inference.tail(60)
        time.sleep(0.3)
    assert "inference_feature_readings_accepted_total 2.0" in metrics

    # a refused file: the CLI says why (the field and index) and exits non-zero
    readings.write_text(json.dumps({"student_id": sid, "event_timestamp": reading_time(0), "absences": -4}))
    out = _ingest(readings, url, tmp_path)
    assert out.returncode == 1 and "absences" in out.stderr and "422" in out.stderr
