"""HTTP: the monitor's routes against a real export, a real inference-like and trainer-like HTTP server;
the scheduler; the monitor as a real process; the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from gradeflow_monitor.app import create_app
from gradeflow_monitor.config import MonitorSettings
from gradeflow_shared import synth
from gradeflow_shared.errors import ConfigError
from gradeflow_shared.procs import ServiceProcess, bin_path
from gradeflow_testkit import prom
from gradeflow_testkit.loop import wait_for
from gradeflow_testkit.monitor_peers import ADMIN_TOKEN, monitor_settings, simple_export
from gradeflow_testkit.servers import ThreadServer, free_port


def settings(tmp: Path, model_dir: Path, inf: ThreadServer, tr: ThreadServer, **kw: Any) -> MonitorSettings:
    return monitor_settings(tmp, model_dir, inf.url, tr.url, **kw)


def test_routes_with_real_export_and_http_peers(
    tmp_path: Path, real_export: tuple[Path, Any], fake_inference: Any, fake_trainer: Any
) -> None:
    model_dir, pipe = real_export
    (inf, inf_srv), (tr, tr_srv) = fake_inference, fake_trainer
    s = settings(tmp_path, model_dir, inf_srv, tr_srv)
    with TestClient(create_app(s)) as c:
        assert c.get("/drift").json()["run_id"] is None
        assert c.get("/health").json()["status"] == "ok"

        # no traffic yet: no verdict, nothing triggered
        r = c.post("/checks")
        assert r.status_code == 200 and r.json()["action"] == "no_verdict"

        # i.i.d. traffic predicted by the real model: no drift, no action
        ok = synth.generate(400, seed=31)
        inf.log(ok, version=1, predictions=pipe.predict(ok[synth.FEATURES]))
        v = c.post("/checks").json()
        assert v["rows"] == 400 and not v["dataset_drift"] and not v["degraded"] and v["action"] == "none"
        assert v["performance"]["labelled_rows"] == 400

        # shifted traffic: the window is the newest 400+600 rows -> drift -> retrain over HTTP with the token
        bad = synth.generate(600, seed=32, scenario="covariate_attendance")
        inf.log(bad, version=1, predictions=pipe.predict(bad[synth.FEATURES]))
        v = c.post("/checks").json()
        assert v["rows"] == 1000 and v["dataset_drift"] and "attendance_pct" in v["drifted_columns"]
        assert v["action"] == "retrain_triggered" and v["retrain_job_id"] in tr.jobs
        assert len(tr.requests) == 1 and tr.requests[0].monitor_run_id == v["run_id"]

        # the job is queued at the trainer: the next check skips ("in flight"), no second request
        v2 = c.post("/checks").json()
        assert v2["action"] == "retrain_skipped" and "in flight" in v2["action_reason"]
        assert len(tr.requests) == 1
        assert c.get("/drift").json()["run_id"] == v2["run_id"]

        # reports: index (newest first, with the SVG chart), the Evidently HTML, the JSON
        page = c.get("/reports").text
        assert "<svg" in page and "retrain_triggered" in page and "in flight" in page
        assert page.index(f"<td>{v2['run_id']}</td>") < page.index(f"<td>{v['run_id']}</td>")
        html = c.get(f"/reports/{v['run_id']}")
        assert (
            html.status_code == 200
            and "text/html" in html.headers["content-type"]
            and len(html.content) > 1e5
        )
        body = c.get(f"/reports/{v['run_id']}.json").json()
        assert body["drift"]["dataset_drift"] and "evidently" in body and body["window_last_id"] == 1000
        assert c.get("/reports/9999").status_code == 404
        metrics = c.get("/metrics").text
        assert 'gradeflow_monitor_column_drift_score{column="attendance_pct",method="wasserstein"}' in metrics
        assert "gradeflow_monitor_retrains_triggered_total 1.0" in metrics
        assert 'gradeflow_monitor_retrains_skipped_total{reason="in_flight"} 1.0' in metrics
        assert "gradeflow_monitor_window_mae" in metrics
        # the verdicts alert rules read: the last check's gauges and the count of checks per verdict
        assert prom.value(metrics, "gradeflow_monitor_dataset_drift") == 1
        assert prom.value(metrics, "gradeflow_monitor_degraded") == float(v2["degraded"])
        assert prom.value(metrics, "gradeflow_monitor_verdicts_total", verdict="drift") == 2
        assert prom.value(metrics, "gradeflow_monitor_verdicts_total", verdict="degraded") == sum(
            float(x["degraded"]) for x in (v, v2)
        )


def test_monitor_refuses_to_start_with_a_weak_admin_token(
    tmp_path: Path, fake_inference: Any, fake_trainer: Any
) -> None:
    (_, inf_srv), (_, tr_srv) = fake_inference, fake_trainer
    s = settings(tmp_path, tmp_path / "models", inf_srv, tr_srv, admin_token="s3cret")
    with pytest.raises(ConfigError, match="ADMIN_TOKEN"), TestClient(create_app(s)):
        pass


def test_window_resets_on_new_model_version(tmp_path: Path, fake_inference: Any, fake_trainer: Any) -> None:
    (inf, inf_srv), (tr, tr_srv) = fake_inference, fake_trainer
    model_dir = tmp_path / "models"
    simple_export(model_dir, version=1)
    s = settings(tmp_path, model_dir, inf_srv, tr_srv, min_window_rows=100)
    inf.log(synth.generate(500, seed=41, scenario="covariate_attendance"), version=1)
    with TestClient(create_app(s)) as c:
        v = c.post("/checks").json()
        assert v["action"] == "retrain_triggered" and v["model_version"] == 1
        tr.finish_all()
        # the trainer promotes version 2; old-version rows must not count for it
        simple_export(model_dir, version=2)
        v = c.post("/checks").json()
        assert v["model_version"] == 2 and v["rows"] == 0 and v["action"] == "no_verdict"
        inf.log(synth.generate(150, seed=42), version=2)
        v = c.post("/checks").json()
        assert v["rows"] == 150 and not v["dataset_drift"] and v["action"] == "none"
        assert len(tr.requests) == 1


def test_trainer_unreachable_is_recorded_not_a_storm(tmp_path: Path, fake_inference: Any) -> None:
    inf, inf_srv = fake_inference
    model_dir = tmp_path / "models"
    simple_export(model_dir)

    class Down:
        url = f"http://127.0.0.1:{free_port()}"  # nothing listens here

    s = settings(tmp_path, model_dir, inf_srv, Down, retrain_failure_backoff_seconds=3600)  # type: ignore[arg-type]
    inf.log(synth.generate(400, seed=5, scenario="new_category"), version=1)
    with TestClient(create_app(s)) as c:
        v = c.post("/checks").json()
        assert v["action"] == "retrain_failed" and "ConnectError" in v["action_reason"]
        v = c.post("/checks").json()
        assert v["action"] == "retrain_skipped" and "unreachable" in v["action_reason"]


def test_scheduler_runs_checks(tmp_path: Path, fake_inference: Any, fake_trainer: Any) -> None:
    (inf, inf_srv), (_, tr_srv) = fake_inference, fake_trainer
    model_dir = tmp_path / "models"
    simple_export(model_dir)
    inf.log(synth.generate(200, seed=8), version=1)
    s = settings(tmp_path, model_dir, inf_srv, tr_srv, scheduler_enabled=True, check_interval_seconds=1)
    with TestClient(create_app(s)) as c:
        assert c.get("/health").json()["scheduler"] is True
        # waits for the event (two stored runs), bounded generously for a busy machine
        wait_for(
            "two scheduled checks (interval 1 s)",
            lambda: c.get("/drift").json()["run_id"] is not None and c.get("/health").json()["runs"] >= 2,
            timeout=180,
            interval=0.2,
        )
        v = c.get("/drift").json()
        assert v["rows"] == 200 and v["action"] == "none"


@pytest.mark.integration
def test_monitor_process_and_cli(tmp_path: Path, fake_inference: Any, fake_trainer: Any) -> None:
    (inf, inf_srv), (tr, tr_srv) = fake_inference, fake_trainer
    model_dir = tmp_path / "models"
    simple_export(model_dir)
    inf.log(synth.generate(600, seed=9, scenario="covariate_attendance"), version=1)
    port = free_port()
    env = {
        "DATA_DIR": str(tmp_path / "data"),
        "MODEL_DIR": str(model_dir),
        "MONITOR_PORT": str(port),
        "INFERENCE_URL": inf_srv.url,
        "TRAINER_URL": tr_srv.url,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "CHECK_INTERVAL_SECONDS": "2",
        "MIN_LABELLED_ROWS": "50",
    }
    svc = ServiceProcess(
        "monitor",
        [bin_path("gradeflow-monitor")],
        env,
        tmp_path / "monitor.log",
        health_url=f"http://127.0.0.1:{port}/health",
    )
    svc.start(wait=60)
    try:

        def third_run() -> dict[str, Any] | None:
            v = httpx.get(f"http://127.0.0.1:{port}/drift", timeout=10).json()
            return v if v["run_id"] is not None and int(v["run_id"]) >= 3 else None

        try:
            v = wait_for("three scheduled checks (interval 2 s)", third_run, timeout=240, interval=0.5)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{svc.tail()}") from None
        assert len(tr.requests) == 1, "one retrain, then the guards hold"
        assert v["dataset_drift"] and v["action"] == "retrain_skipped"
        r = httpx.post(f"http://127.0.0.1:{port}/checks", params={"wait": "false"}, timeout=10)
        assert r.status_code in (202, 409)
    finally:
        svc.stop()
    assert svc.proc is not None and svc.proc.returncode is not None

    # the CLI without services: two CSVs -> drift_report.html
    cur, ref = tmp_path / "cur.csv", tmp_path / "ref.csv"
    synth.generate(700, seed=3, scenario="new_category").to_csv(cur, index=False)
    synth.generate(1000, seed=4).to_csv(ref, index=False)
    out = tmp_path / "drift_report.html"
    res = subprocess.run(
        [
            bin_path("gradeflow-monitor"),
            "check",
            "--current",
            str(cur),
            "--reference",
            str(ref),
            "--out",
            str(out),
            "--target",
            synth.TARGET,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path / "d2"), "MODEL_DIR": str(tmp_path / "none")},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary["dataset_drift"] and "school_type" in summary["drifted_columns"]
    assert synth.TARGET not in [c for c in summary["drifted_columns"]]
    assert out.stat().st_size > 100_000 and out.with_suffix(".json").is_file()
