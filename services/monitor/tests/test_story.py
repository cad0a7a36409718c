"""The performance baseline (settle after healing) and the reports' story: header, JSON, index.

Real Evidently, a real SQLite store, the monitor's app over TestClient; fake window, trainer and clock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from fastapi.testclient import TestClient

from gradeflow_monitor import guards as g
from gradeflow_monitor.app import create_app
from gradeflow_monitor.config import MonitorSettings
from gradeflow_monitor.pages import index_page
from gradeflow_monitor.performance import evaluate_performance
from gradeflow_monitor.service import Monitor
from gradeflow_monitor.storage import Run, Store
from gradeflow_monitor.story import SETTLED, header_html, story
from gradeflow_shared import synth
from gradeflow_shared.contracts import GateDecision, Job, RetrainRequest, TrainResult
from gradeflow_shared.manifest import PerformanceBaseline
from gradeflow_testkit.monitor_peers import ADMIN_TOKEN, simple_export

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
RECENT = PerformanceBaseline(evaluation_set="recent_labelled", mae=2.0, rmse=2.5, rows=180, measured_at=T0)
HOSTILE_JOB = '"><script>alert(1)</script>'


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        return self.t


class Window:
    """The frame the test sets; predictions = actual + ``offset``; prediction times one second apart."""

    def __init__(self) -> None:
        self.df = pd.DataFrame()

    def set(self, df: pd.DataFrame, offset: float, start_id: int = 1) -> None:
        df = df.copy()
        df["id"] = range(start_id, start_id + len(df))
        df["ts"] = [T0 - timedelta(seconds=len(df) - i) for i in range(len(df))]
        df["prediction"] = df[synth.TARGET] + offset
        df["actual"] = df[synth.TARGET]
        df["feedback_at"] = T0
        self.df = df.drop(columns=[synth.TARGET])

    def fetch(self, model_version: int) -> pd.DataFrame:
        return self.df


class Trainer:
    def __init__(self, job_id: str = "job1") -> None:
        self.job_id = job_id
        self.calls: list[RetrainRequest] = []
        self.result: TrainResult | None = None  # set: the job finished with this result

    def retrain(self, request: RetrainRequest) -> Job:
        self.calls.append(request)
        return Job(id=self.job_id, state="queued", created_at=T0)

    def job(self, job_id: str) -> Job:
        state = "succeeded" if self.result else "queued"
        return Job(id=job_id, state=state, created_at=T0, result=self.result)


def settings(tmp_path: Path, **kw: Any) -> MonitorSettings:
    base: dict[str, Any] = dict(
        data_dir=tmp_path,
        model_dir=tmp_path / "models",
        scheduler_enabled=False,
        min_labelled_rows=50,
        retrain_cooldown_seconds=0,
        admin_token=ADMIN_TOKEN,
        trainer_url="http://trainer.internal:8001",
    )
    base.update(kw)
    return MonitorSettings(**base)


def monitor(
    tmp_path: Path, baseline: PerformanceBaseline | None, recent: pd.DataFrame | None = None, **kw: Any
) -> tuple[Monitor, Window, Trainer]:
    simple_export(tmp_path / "models", metrics={"mae": 1.0, "rmse": 1.25}, baseline=baseline, recent=recent)
    s = settings(tmp_path, **kw)
    window, trainer = Window(), Trainer()
    return Monitor(s, Store(s.db_url()), window=window, trainer=trainer, clock=Clock()), window, trainer


# ------------------------------------------------------------------ the baseline
def test_window_is_judged_against_the_baseline_not_the_base_test_mae() -> None:
    df = pd.DataFrame({"prediction": [12.0] * 60 + [10.0] * 40, "actual": [10.0] * 100})  # MAE 1.2
    old = evaluate_performance(df, {"mae": 0.8, "rmse": 1.0}, 1.3, 50)  # an export without a baseline
    assert old.degraded and old.baseline_set == "base_holdout" and abs((old.ratio or 0) - 1.5) < 1e-9
    new = evaluate_performance(df, {"mae": 0.8, "rmse": 1.0}, 1.3, 50, baseline=RECENT)
    assert (
        not new.degraded
        and abs((new.ratio or 0) - 0.6) < 1e-9
        and new.baseline_mae == 2.0
        and new.test_mae == 0.8
    )
    assert "recent_labelled, 180 rows" in new.reason and new.has_verdict
    few = evaluate_performance(df.head(10), {}, 1.3, 50, baseline=RECENT)
    assert not few.degraded and not few.has_verdict


def test_settled_after_healing_drift_the_model_was_validated_on(tmp_path: Path) -> None:
    mon, window, trainer = monitor(tmp_path, RECENT)
    shifted = synth.generate(600, seed=11, scenario="covariate_attendance")
    window.set(shifted, offset=2.1)  # window MAE 2.1 = 1.05 x the recent baseline
    run = mon.run_check("test")
    assert run.dataset_drift and not run.degraded and run.baseline_set == "recent_labelled"
    assert (run.action, run.action_code) == (g.NONE, SETTLED) and "settled" in run.action_reason
    assert not trainer.calls
    # the same traffic, but the model got worse than its baseline: retrain
    window.set(shifted, offset=3.0, start_id=601)
    run = mon.run_check("test")
    assert run.degraded and run.action == g.TRIGGERED and "performance degraded" in run.action_reason
    assert len(trainer.calls) == 1


def test_traffic_is_compared_with_the_rows_the_model_was_promoted_on(tmp_path: Path) -> None:
    shifted = synth.generate(300, seed=5, scenario="covariate_attendance")  # what v2 was promoted on
    mon, window, trainer = monitor(tmp_path, RECENT, recent=shifted)
    # the same shift goes on: no drift against those rows, the model performs as there -> nothing to do
    window.set(synth.generate(600, seed=11, scenario="covariate_attendance"), offset=2.0)
    run = mon.run_check("test")
    assert run.reference_set == "recent_labelled" and run.reference_rows == 300
    assert not run.dataset_drift and not run.degraded and run.action == g.NONE and not trainer.calls
    # a different shift (attendance back to normal): drift against those rows, not degraded: a first check
    # only notes it, the next one that sees it too retrains
    window.set(synth.generate(600, seed=12), offset=2.0, start_id=601)
    run = mon.run_check("test")
    assert run.dataset_drift and "attendance_pct" in run.drifted_columns and not run.degraded
    assert (run.action, run.action_code) == (g.NONE, "unconfirmed") and not trainer.calls
    assert "next check must confirm" in (run.action_reason or "")
    window.set(synth.generate(600, seed=13), offset=2.0, start_id=1201)
    run = mon.run_check("test")
    assert run.dataset_drift and run.action == g.TRIGGERED and len(trainer.calls) == 1
    told = json.loads(Path(run.report_json or "").read_text())["verdict"]
    assert (told["reference"], told["reference_rows"]) == ("recent_labelled", 300)


def test_too_few_recent_rows_fall_back_to_the_training_reference(tmp_path: Path) -> None:
    shifted = synth.generate(30, seed=5, scenario="covariate_attendance")
    mon, window, _ = monitor(tmp_path, RECENT, recent=shifted)  # MIN_RECENT_REFERENCE_ROWS 50
    window.set(synth.generate(300, seed=11), offset=2.0)
    run = mon.run_check("test")
    assert run.reference_set == "training" and run.reference_rows == 1000 and not run.dataset_drift


def test_without_a_recent_baseline_drift_still_triggers(tmp_path: Path) -> None:
    # an export before performance_baseline existed (or promoted on the base holdout): today's behaviour
    mon, window, trainer = monitor(tmp_path, None)
    window.set(synth.generate(600, seed=11, scenario="covariate_attendance"), offset=1.0)
    run = mon.run_check("test")
    assert run.dataset_drift and not run.degraded and run.baseline_set == "base_holdout"
    assert run.action == g.TRIGGERED and len(trainer.calls) == 1


def test_a_check_of_the_replaced_model_does_not_retrain_again(tmp_path: Path) -> None:
    """The job promoted v2 while this check judged v1's window (the race seen with real processes)."""
    mon, window, trainer = monitor(tmp_path, None)
    window.set(synth.generate(600, seed=11, scenario="covariate_attendance"), offset=1.0)
    assert mon.run_check("test").action == g.TRIGGERED
    mon.clock.t += timedelta(seconds=10)  # type: ignore[attr-defined]
    window.set(synth.generate(600, seed=12, scenario="covariate_attendance"), offset=1.0, start_id=601)
    window.df["feedback_at"] = mon.clock()  # labels that arrived after the trigger
    decision = GateDecision(promoted=True, reason="better")
    trainer.result = TrainResult(
        run_id="r2", version=2, model_name="m", metrics={}, decision=decision, exported=True
    )
    run = mon.run_check("test")
    assert (run.action, run.action_code) == (
        g.SKIPPED,
        g.SKIP_SUPERSEDED,
    ) and "promoted v2" in run.action_reason
    assert len(trainer.calls) == 1
    trainer.result = trainer.result.model_copy(update={"decision": GateDecision(promoted=False, reason="no")})
    assert mon.run_check("test").action == g.TRIGGERED  # not promoted: the old model still serves


# ------------------------------------------------------------------ the report's story
def test_report_header_and_json_tell_the_story_escaped(tmp_path: Path) -> None:
    simple_export(tmp_path / "models", metrics={"mae": 1.0, "rmse": 1.25})
    s = settings(tmp_path, trainer_public_url="http://localhost:8001/")
    window, trainer = Window(), Trainer(HOSTILE_JOB)
    window.set(synth.generate(600, seed=11, scenario="covariate_attendance"), offset=1.6)
    with TestClient(create_app(s, window=window, trainer=trainer, clock=Clock())) as c:
        v = c.post("/checks").json()
        assert v["action"] == "retrain_triggered" and v["retrain_job_id"] == HOSTILE_JOB
        r = c.get(f"/reports/{v['run_id']}")
        assert r.status_code == 200 and "default-src 'none'" in r.headers["content-security-policy"]
        page = r.text
        head = page[page.index('<section id="gradeflow-story"') : page.index("</section>")]
        body = c.get(f"/reports/{v['run_id']}.json").json()
        index = c.get("/reports").text
    # the header: model and run, window time range, verdict, performance vs baseline, decision and job
    assert "v1 · MLflow run run1" in head and f"run {v['run_id']}" in head
    assert "2026-11-27 11:50:00 UTC → 2026-11-27 11:59:59 UTC" in head
    assert "drift: yes" in head and "attendance_pct" in head
    assert "performance: degraded" in head
    assert "window MAE 1.600 vs baseline MAE 1.000 (base_holdout" in head and "ratio 1.60" in head
    assert "600 rows labelled" in head and "retrain called" in head
    assert 'href="../reports"' in head
    # the hostile job id is text everywhere: escaped in the header, percent-encoded in the link
    assert "<script>" not in head and "&lt;script&gt;alert(1)&lt;/script&gt;" in head
    assert 'href="http://localhost:8001/jobs/%22%3E%3Cscript%3Ealert%281%29%3C%2Fscript%3E"' in head
    assert "<script>alert(1)" not in index
    # the JSON: the same fields, with the action
    assert (
        body["run_id"] == int(v["run_id"]) and body["model_version"] == 1 and body["model_run_id"] == "run1"
    )
    assert body["window"]["first_at"] == "2026-11-27T11:50:00+00:00" and body["window"]["rows"] == 600
    assert body["verdict"]["dataset_drift"] and body["verdict"]["drifted_columns"] >= 2
    assert body["verdict"]["degraded"] and body["verdict"]["performance_verdict"]
    p = body["performance_vs_baseline"]
    assert (p["baseline_mae"], p["baseline_set"], p["labelled_rows"]) == (1.0, "base_holdout", 600)
    assert abs(p["window_mae"] - 1.6) < 1e-9 and abs(p["ratio"] - 1.6) < 1e-9
    a = body["action"]
    assert (a["action"], a["label"], a["job_id"], a["job_role"]) == (
        "retrain_triggered",
        "retrain called",
        HOSTILE_JOB,
        "called",
    )
    assert a["job_url"].startswith("http://localhost:8001/jobs/%22") and "evidently" in body


def test_skipped_checks_name_the_job_in_flight_and_small_windows_get_a_header_page(tmp_path: Path) -> None:
    mon, window, trainer = monitor(tmp_path, None, min_window_rows=200)
    window.set(synth.generate(600, seed=11, scenario="covariate_attendance"), offset=1.0)
    first = mon.run_check("test")
    second = mon.run_check("test")  # the job is still queued
    assert second.action_code == g.SKIP_IN_FLIGHT and second.retrain_job_id is None
    told = json.loads(Path(second.report_json or "").read_text())["action"]
    assert (told["label"], told["job_id"], told["job_role"]) == ("retrain in flight", "job1", "in flight")
    assert told["job_url"] == "http://trainer.internal:8001/jobs/job1"
    assert first.report_html and "retrain called" in Path(first.report_html).read_text()
    window.set(synth.generate(50, seed=1), offset=0.0)  # too few rows: no Evidently report, still a header
    small = mon.run_check("test")
    assert small.action == g.NO_VERDICT and small.report_html
    page = Path(small.report_html).read_text()
    assert "gradeflow-story" in page and "drift: no verdict" in page and "50 rows" in page


def test_header_without_values_shows_dashes_not_none() -> None:
    run = Run(id=3, started_at=T0, finished_at=T0, status="no_verdict", action=g.NO_VERDICT, rows=0)
    run.columns = []
    html = header_html(story(run))
    assert "None" not in html and "—" in html and "no job" in html and "none (no verdict)" in html


# ------------------------------------------------------------------ the index
def _run(i: int, **kw: Any) -> Run:
    base: dict[str, Any] = dict(
        id=i,
        started_at=T0 + timedelta(minutes=i),
        finished_at=T0 + timedelta(minutes=i),
        status="ok",
        model_version=1,
        window_first_id=10_000,
        window_last_id=3_010_000,
        window_first_at=T0 - timedelta(minutes=5),
        window_last_at=T0 + timedelta(minutes=i),
        rows=500,
        drift_share=0.2,
        drift_share_threshold=0.1,
        dataset_drift=True,
        action=g.TRIGGERED,
        retrain_job_id="abc123",
        report_json="x.json",
    )
    base.update(kw)
    r = Run(**base)
    r.columns = []
    return r


def test_index_single_run_without_labels() -> None:
    page = index_page([_run(1)])
    assert "2026-11-27 11:55:00 – 12:01:00 UTC" in page  # a time range, not record ids
    assert "window ids" not in page and "3010000" not in page and "10000–" not in page
    assert "MAE" not in page and "max 1.10" not in page  # no MAE anywhere: no column, line or label
    assert page.count("<circle") == 1 and "<polyline" not in page  # one run = one point
    assert "drift threshold 0.1" in page and "retrain called" in page and "job abc123" in page


def test_index_with_labels_draws_lines_and_shows_mae_vs_baseline() -> None:
    runs = [_run(2, mae=2.4, baseline_mae=1.2, degraded=True), _run(1, mae=1.1, baseline_mae=1.0)]
    page = index_page(runs)
    assert "window MAE vs baseline" in page and "2.400 vs 1.200 (2.00x)" in page
    assert page.count("<polyline") == 3  # drift share, MAE, baseline MAE (dashed)
    assert "window MAE (0–2.64" in page
    assert index_page([]).count("<svg") == 0


def test_older_history_gets_the_new_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as c:  # the run table as the first release wrote it (a subset is enough)
        c.execute(
            sa.text(
                "CREATE TABLE monitor_runs (id INTEGER PRIMARY KEY, started_at DATETIME, finished_at DATETIME,"
                " trigger VARCHAR(32), status VARCHAR(32), model_version INTEGER, rows INTEGER,"
                " reference_rows INTEGER, labelled_rows INTEGER, new_labelled_rows INTEGER,"
                " dataset_drift BOOLEAN, degraded BOOLEAN, performance_json TEXT, policy_json TEXT,"
                " verdict_reason TEXT, action VARCHAR(32), action_code VARCHAR(64), action_reason TEXT)"
            )
        )
        c.execute(
            sa.text(
                "INSERT INTO monitor_runs VALUES (1, '2026-11-01 10:00:00', '2026-11-01 10:00:05', 'schedule',"
                " 'ok', 1, 300, 1000, 0, 0, 0, 0, '{}', '{}', '', 'none', '', '')"
            )
        )
    engine.dispose()
    store = Store(url)
    try:
        cols = {c["name"] for c in sa.inspect(store.engine).get_columns("monitor_runs")}
        assert {"window_first_at", "window_last_at", "baseline_mae", "baseline_set", "retrain_job_id"} <= cols
        old = store.get(1)
        assert old is not None and old.window_first_at is None and old.baseline_mae is None
        assert "<td>1</td>" in index_page(store.list_runs())
    finally:
        store.close()
