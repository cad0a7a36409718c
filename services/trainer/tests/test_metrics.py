"""The trainer's /metrics with the real app and real trainings (in-memory registry): jobs by outcome and
duration, champion changes by action from the promotion history, the champion version."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gradeflow_shared.contracts import RetrainRequest
from gradeflow_shared.errors import DatasetError
from gradeflow_testkit.prom import value
from gradeflow_trainer import pipeline as P
from gradeflow_trainer import service
from gradeflow_trainer.app import create_app
from gradeflow_trainer.history import make_event
from gradeflow_trainer.jobs import JobRunner
from gradeflow_trainer.registry import InMemoryRegistry

from .conftest import unit_settings

AUTH = {"Authorization": "Bearer unit-test-token-0123456789"}
FAST = ("gbr", {"n_estimators": 20, "learning_rate": 0.1, "max_depth": 2})


def _run_job(c: TestClient) -> str:
    r = c.post("/retrain", json={"reason": "metrics test"}, headers=AUTH)
    assert r.status_code == 202, r.text
    runner: JobRunner = c.app.state.runner  # type: ignore[attr-defined]
    job = runner.wait(r.json()["id"], 300)
    assert job is not None
    return job.state


def test_jobs_promotions_rollback_and_champion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "fit", functools.partial(P.fit, candidates=[FAST]))
    settings = unit_settings(tmp_path, rows=600, promotion_min_improvement=0.0)  # every retrain promotes
    with TestClient(create_app(settings, registry=InMemoryRegistry())) as c:
        text = c.get("/metrics").text
        assert value(text, "gradeflow_trainer_jobs_total", outcome="succeeded") == 0
        assert value(text, "gradeflow_trainer_champion_version") is None
        assert _run_job(c) == "succeeded"
        assert _run_job(c) == "succeeded"
        text = c.get("/metrics").text
        assert value(text, "gradeflow_trainer_jobs_total", outcome="succeeded") == 2
        assert value(text, "gradeflow_trainer_job_duration_seconds_count", outcome="succeeded") == 2
        assert value(text, "gradeflow_trainer_job_duration_seconds_sum", outcome="succeeded") > 0  # type: ignore[operator]
        assert value(text, "gradeflow_trainer_promotion_events_total", action="gate") == 2
        assert value(text, "gradeflow_trainer_champion_version") == 2
        assert value(text, "gradeflow_trainer_jobs_active", state="running") == 0
        r = c.post("/rollback", json={"reason": "metrics test"}, headers=AUTH)
        assert r.status_code == 200, r.text
        text = c.get("/metrics").text
        assert value(text, "gradeflow_trainer_promotion_events_total", action="rollback") == 1
        assert value(text, "gradeflow_trainer_champion_version") == 1


def test_failed_job_and_history_read_at_scrape_time(tmp_path: Path) -> None:
    def bad(request: RetrainRequest, progress: object) -> None:
        raise DatasetError("no rows")

    settings = unit_settings(tmp_path)
    with TestClient(create_app(settings, train_fn=bad)) as c:  # type: ignore[arg-type]
        assert _run_job(c) == "failed"
        # the history is read at each scrape (events written by another trainer process count too)
        hist = tmp_path / "data" / "trainer" / "promotions.jsonl"
        event = make_event(settings.model_name, 3, 2, "promote", "written by another process")
        hist.write_text(event.model_dump_json() + "\n")
        text = c.get("/metrics").text
    assert value(text, "gradeflow_trainer_jobs_total", outcome="failed") == 1
    assert value(text, "gradeflow_trainer_jobs_total", outcome="succeeded") == 0
    assert value(text, "gradeflow_trainer_promotion_events_total", action="promote") == 1
