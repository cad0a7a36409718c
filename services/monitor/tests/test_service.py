"""The check end to end in-process: real Evidently, real SQLite/PostgreSQL store, fake window/trainer/clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from gradeflow_monitor import guards as g
from gradeflow_monitor.config import MonitorSettings
from gradeflow_monitor.service import Monitor
from gradeflow_monitor.storage import Store
from gradeflow_shared import synth
from gradeflow_shared.contracts import Job, RetrainRequest
from gradeflow_shared.errors import ConfigError, Conflict, UpstreamError
from gradeflow_testkit.monitor_peers import ADMIN_TOKEN, simple_export


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


class Window:
    """Serves whatever frame the test sets, as rows of the requested version."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.df = pd.DataFrame()
        self.versions: list[int] = []

    def set(self, df: pd.DataFrame, prediction_offset: float = 0.0, start_id: int = 1) -> None:
        df = df.copy()
        df["id"] = range(start_id, start_id + len(df))
        df["prediction"] = df[synth.TARGET] + prediction_offset
        df["actual"] = df[synth.TARGET]
        df["feedback_at"] = self.clock()
        self.df = df.drop(columns=[synth.TARGET])

    def fetch(self, model_version: int) -> pd.DataFrame:
        self.versions.append(model_version)
        return self.df


class Trainer:
    def __init__(self) -> None:
        self.calls: list[RetrainRequest] = []
        self.state = "queued"
        self.down = False

    def retrain(self, request: RetrainRequest) -> Job:
        if self.down:
            raise UpstreamError("POST /retrain: ConnectError")
        self.calls.append(request)
        return Job(id=f"job{len(self.calls)}", state="queued", created_at=datetime.now(UTC))

    def job(self, job_id: str) -> Job:
        if self.down:
            raise UpstreamError("GET /jobs: ConnectError")
        return Job(id=job_id, state=self.state, created_at=datetime.now(UTC))  # type: ignore[arg-type]


def make(tmp_path: Path, db_url: str | None = None, **kw: object) -> tuple[Monitor, Window, Trainer, Clock]:
    simple_export(tmp_path / "models")
    settings = MonitorSettings(
        data_dir=tmp_path,
        model_dir=tmp_path / "models",
        monitor_db_url=db_url or "",
        scheduler_enabled=False,
        retrain_cooldown_seconds=600,
        min_labelled_rows=50,
        retrain_failure_backoff_seconds=60,
        **kw,
    )
    clock = Clock()
    window, trainer = Window(clock), Trainer()
    return (
        Monitor(settings, Store(settings.db_url()), window=window, trainer=trainer, clock=clock),
        window,
        trainer,
        clock,
    )


def test_drift_triggers_once_and_guards_hold(tmp_path: Path) -> None:
    mon, window, trainer, clock = make(tmp_path)
    window.set(synth.generate(600, seed=11, scenario="covariate_attendance"))
    run = mon.run_check("test")
    assert run.status == "ok" and run.dataset_drift and not run.degraded
    assert {"attendance_pct", "absences"} <= set(run.drifted_columns)
    assert run.action == g.TRIGGERED and run.retrain_job_id == "job1"
    assert trainer.calls[0].monitor_run_id == str(run.id) and "attendance_pct" in trainer.calls[0].reason
    assert (run.window_first_id, run.window_last_id, run.rows, run.model_version) == (1, 600, 600, 1)
    assert Path(run.report_html or "").stat().st_size > 100_000 and Path(run.report_json or "").is_file()
    col = next(c for c in run.columns if c.column == "attendance_pct")
    assert col.method == "wasserstein" and col.score > col.threshold >= 0.1

    clock.advance(60)
    run2 = mon.run_check("test")
    assert (run2.action, run2.action_code) == (g.SKIPPED, g.SKIP_IN_FLIGHT)
    trainer.state = "succeeded"
    run3 = mon.run_check("test")
    assert run3.action_code == g.SKIP_COOLDOWN
    clock.advance(600)
    run4 = mon.run_check("test")  # same labelled rows as before the retrain: nothing new to learn from
    assert run4.action_code == g.SKIP_LABELLED and "0 new labelled rows" in run4.action_reason
    window.set(synth.generate(600, seed=12, scenario="covariate_attendance"), start_id=601)  # fresh feedback
    run5 = mon.run_check("test")
    assert run5.action == g.TRIGGERED and len(trainer.calls) == 2

    # the guard state survives a restart: a new Monitor on the same store still sees the in-flight job
    trainer.state = "running"
    mon2 = Monitor(mon.settings, Store(mon.settings.db_url()), window=window, trainer=trainer, clock=clock)
    assert mon2.run_check("test").action_code == g.SKIP_IN_FLIGHT
    assert len(trainer.calls) == 2
    v = mon2.verdict()
    assert v.action == g.SKIPPED and "in flight" in v.action_reason and v.dataset_drift


def test_trainer_down_fails_then_backs_off(tmp_path: Path) -> None:
    mon, window, trainer, clock = make(tmp_path)
    trainer.down = True
    window.set(synth.generate(500, seed=3, scenario="new_category"))
    run = mon.run_check("test")
    assert run.action == g.FAILED and "ConnectError" in run.action_reason
    clock.advance(30)
    assert mon.run_check("test").action_code == g.SKIP_BACKOFF  # no storm while the trainer is down
    clock.advance(31)
    assert mon.run_check("test").action == g.FAILED  # 60 s later: one more attempt
    clock.advance(100)
    assert mon.run_check("test").action_code == g.SKIP_BACKOFF  # 2 failures: waits 120 s
    trainer.down = False
    clock.advance(21)
    assert mon.run_check("test").action == g.TRIGGERED
    assert len(trainer.calls) == 1


def test_concept_drift_is_caught_by_performance_not_by_features(tmp_path: Path) -> None:
    mon, window, trainer, _ = make(tmp_path)
    # a stale model: its predictions follow the old concept, the actuals the new one
    old = synth.generate(800, seed=21)
    new = synth.generate(800, seed=21, scenario="concept_study_hours", severity=2.0)
    df = new.copy()
    window.set(df)
    window.df["prediction"] = old[synth.TARGET].to_numpy()
    run = mon.run_check("test")
    assert not run.dataset_drift  # the features did not move
    assert run.degraded and run.mae is not None and run.mae > 1.3 * 1.0
    assert run.action == g.TRIGGERED and "performance degraded" in run.action_reason


def test_small_window_gives_no_verdict_and_no_action(tmp_path: Path) -> None:
    mon, window, trainer, _ = make(tmp_path, min_window_rows=200)
    window.set(synth.generate(150, seed=1, scenario="covariate_attendance"))
    run = mon.run_check("test")
    assert run.status == "no_verdict" and run.action == g.NO_VERDICT and run.drift_share is None
    assert "150 rows < minimum 200" in run.action_reason and not trainer.calls


def test_no_drift_no_action(tmp_path: Path) -> None:
    mon, window, trainer, _ = make(tmp_path)
    window.set(synth.generate(1000, seed=99))
    run = mon.run_check("test")
    assert run.status == "ok" and not run.dataset_drift and not run.degraded and run.action == g.NONE
    assert not trainer.calls


def test_two_checks_never_overlap(tmp_path: Path) -> None:
    mon, window, _, _ = make(tmp_path)
    window.set(synth.generate(300, seed=1))
    assert mon._lock.acquire(blocking=False)  # a check "is running"
    try:
        with pytest.raises(Conflict):
            mon.run_check("test")
        mon.scheduled_check()  # the scheduler's job just skips
    finally:
        mon._lock.release()
    assert mon.store.count() == 0


def test_history_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    mon, window, trainer, clock = make(tmp_path, db_url=postgres_url)
    window.set(synth.generate(600, seed=11, scenario="covariate_attendance"))
    run = mon.run_check("test")
    clock.advance(5)
    mon.run_check("test")
    runs = mon.store.list_runs()
    assert [r.id for r in runs] == [run.id + 1, run.id]
    assert runs[1].action == g.TRIGGERED and runs[0].action_code == g.SKIP_IN_FLIGHT
    assert len(runs[1].columns) == len(synth.COLUMNS)
    state = mon.store.guard_state()
    assert state.last_job_id == "job1" and state.last_trigger_at == clock.t - timedelta(seconds=5)


@pytest.mark.parametrize("token", ["", "change-me", "s3cret", "x" * 15])
def test_placeholder_or_short_admin_token_is_refused(tmp_path: Path, token: str) -> None:
    """The monitor sends ADMIN_TOKEN to the trainer: a weak one stops it before any check."""
    settings = MonitorSettings(data_dir=tmp_path, admin_token=token, scheduler_enabled=False)
    store = Store(settings.db_url())
    try:
        with pytest.raises(ConfigError, match="ADMIN_TOKEN"):
            Monitor(settings, store)
    finally:
        store.close()
    ok = Monitor(settings.model_copy(update={"admin_token": ADMIN_TOKEN}), Store(settings.db_url()))
    ok.close()
    ok.store.close()
