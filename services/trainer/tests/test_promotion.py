"""The champion change as one transaction: a crash at every step, then the start-up repair.

The fault hook (TRAINER_FAULT_POINT) raises in-process here instead of SIGKILL; the repair is the one
the trainer runs at start (``promotion.startup_repair``) against the in-memory registry.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from gradeflow_shared import manifest as mf
from gradeflow_shared.contracts import Job, RetrainRequest, TrainResult
from gradeflow_trainer import history as hist
from gradeflow_trainer import pipeline as P
from gradeflow_trainer import promotion as pr
from gradeflow_trainer import service
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.jobs import JobRunner
from gradeflow_trainer.registry import JOB_TAG, InMemoryRegistry

from .conftest import unit_settings

GOOD = ("gbr", {"n_estimators": 40, "learning_rate": 0.1, "max_depth": 3})
PUBLISH_STEPS = ("intent", "staged", "alias", "event", "current", "marker")
CASES = [("train", s) for s in pr.STEPS] + [(op, s) for op in ("promote", "rollback") for s in PUBLISH_STEPS]


class Crash(Exception):
    """Stands for the SIGKILL of the fault hook."""


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrainerSettings:

    def crash() -> None:
        raise Crash()

    monkeypatch.setattr(pr, "die", crash)
    monkeypatch.setattr(service, "fit", functools.partial(P.fit, candidates=[GOOD]))
    return unit_settings(
        tmp_path, rows=600, promotion_min_improvement=0.0
    )  # an equal retrain is promoted: every retrain reaches the publish


def train(settings: TrainerSettings, reg: InMemoryRegistry) -> TrainResult:
    return service.train_once(settings, RetrainRequest(reason="unit"), registry=reg)


def consistent(settings: TrainerSettings, reg: InMemoryRegistry) -> int:
    """alias == history head == current == champion.json (versions and run ids); no intent left."""
    alias = reg.champion_version()
    assert alias is not None
    run_id = reg.version(alias).run_id
    events = reg.promotion_events()
    assert hist.champion_stack(events)[-1] == alias
    assert [e.model_dump() for e in service.history(settings).events()] == [e.model_dump() for e in events]
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids)), ids  # no event recorded twice
    cur = mf.read_current(settings.models_path)
    assert cur is not None and (cur[1].version, cur[1].run_id) == (alias, run_id)
    mf.verify_files(cur[0], cur[1], keys=("model", "onnx", "reference"))
    marker = pr.read_marker(settings)
    assert marker is not None and (marker.version, marker.run_id, marker.alias) == (alias, run_id, "champion")
    assert pr.read_intent(settings) is None
    return alias


def prepare(settings: TrainerSettings, reg: InMemoryRegistry, op: str) -> tuple[int, int]:
    """Set-up for ``op``: (champion before, the op's target)."""
    train(settings, reg)  # v1
    if op == "train":
        return 1, 2
    train(settings, reg)  # v2 (champion, equal model)
    if op == "promote":
        return 2, 1
    service.promote(settings, 1, registry=reg)  # stack [1, 2, 1] -> rollback returns to 2
    return 1, 2


def run_op(settings: TrainerSettings, reg: InMemoryRegistry, op: str) -> None:
    if op == "train":
        train(settings, reg)
    elif op == "promote":
        service.promote(settings, 1, registry=reg)
    else:
        service.rollback(settings, registry=reg)


@pytest.mark.parametrize(("op", "step"), CASES, ids=[f"{o}:{s}" for o, s in CASES])
def test_a_crash_at_any_step_is_repaired_at_start(
    settings: TrainerSettings, op: str, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = InMemoryRegistry()
    before, target = prepare(settings, reg, op)
    n_events = len(reg.promotion_events())
    monkeypatch.setattr(settings, "trainer_fault_point", f"{op}:{step}")
    with pytest.raises(Crash):
        run_op(settings, reg, op)
    monkeypatch.setattr(settings, "trainer_fault_point", "")
    moved = pr.STEPS.index(step) >= pr.STEPS.index("alias")
    done = pr.startup_repair(settings, reg)
    assert done or step == "marker"  # after the marker only the intent was left: nothing else to change
    assert consistent(settings, reg) == (target if moved else before)
    events = reg.promotion_events()
    assert len(events) == n_events + (1 if moved else 0)  # the op's one event, never a duplicate
    assert not any(e.reason.startswith("reconcile:") for e in events)  # the intent explained everything
    if op == "train":
        tags = reg.version(2).tags
        assert tags["gate.promoted"] == ("true" if moved else "false"), tags
    # the staged export of an undone change is gone; a finished one is what current serves
    staged = [p for p in mf.list_exports(settings.models_path) if p.name.startswith(f"v{target:06d}-")]
    if not moved and op == "train":
        assert staged == []
    # idempotent: a second start changes nothing
    assert pr.startup_repair(settings, reg) == []
    assert reg.promotion_events() == events
    # and the next change works normally
    service.promote(settings, before if moved else target, registry=reg)
    consistent(settings, reg)


def test_export_of_another_run_is_replaced_by_the_registry_champion(settings: TrainerSettings) -> None:
    """The registry was replaced (e.g. SQLite -> PostgreSQL, volume kept): v1 names another run now."""
    old = InMemoryRegistry()
    train(settings, old)
    old_run = mf.read_current(settings.models_path)[1].run_id  # type: ignore[index]
    new = InMemoryRegistry()
    train(settings, new)  # writes the export of ITS v1 ...
    new.runs["run-1"].tags["x"] = "y"
    new.model_versions[1].run_id = "run-1b"  # ... then its v1 is made to name another run
    new.runs["run-1b"] = new.runs.pop("run-1")
    assert old_run == mf.read_current(settings.models_path)[1].run_id != "run-1b"  # type: ignore[index]
    done = pr.reconcile(settings, new)
    assert any("run-1b" in line for line in done)
    assert consistent(settings, new) == 1
    last = new.promotion_events()[-1]
    assert last.reason.startswith("reconcile:") and last.version == 1
    assert pr.reconcile(settings, new) == []


def test_missing_current_is_re_exported_and_unknown_export_withdrawn(settings: TrainerSettings) -> None:
    reg = InMemoryRegistry()
    train(settings, reg)
    (settings.models_path / mf.CURRENT).unlink()
    (settings.models_path / pr.MARKER_FILE).unlink()
    assert pr.reconcile(settings, reg)
    consistent(settings, reg)
    # a registry with no champion at all: the export nobody knows is withdrawn
    empty = InMemoryRegistry()
    assert pr.reconcile(settings, empty) == [
        "withdrew the export in MODEL_DIR/current: the registry has no champion"
    ]
    assert mf.resolve_current(settings.models_path) is None and pr.read_marker(settings) is None
    assert pr.reconcile(settings, empty) == []


def test_history_head_behind_the_alias_gets_a_reconcile_event(settings: TrainerSettings) -> None:
    reg = InMemoryRegistry()
    train(settings, reg)
    train(settings, reg)
    reg.events = reg.events[:1]  # the old order lost the event after moving the alias
    pr.reconcile(settings, reg)
    assert consistent(settings, reg) == 2
    ev = reg.promotion_events()[-1]
    assert (ev.version, ev.previous_version, ev.action) == (2, 1, "promote") and ev.reason.startswith(
        "reconcile:"
    )


def _job(job_id: str) -> Job:
    return Job.model_validate(
        {
            "id": job_id,
            "state": "running",
            "reason": "r",
            "created_at": "2026-12-01T00:00:00Z",
            "stage": "fit",
        }
    )


def test_interrupted_jobs_get_the_state_of_what_they_did(settings: TrainerSettings) -> None:
    reg = InMemoryRegistry()
    for job_id in ("done", "undecided", "approved"):
        with _as_job(job_id):
            if job_id == "approved":
                settings.trainer_fault_point = "train:alias"
                with pytest.raises(Crash):
                    train(settings, reg)
                settings.trainer_fault_point = ""
            elif job_id == "undecided":
                settings.trainer_fault_point = "train:decided"
                with pytest.raises(Crash):
                    train(settings, reg)
                settings.trainer_fault_point = ""
                reg.model_versions[2].tags.clear()  # as if it died between registering and the gate
                pr.clear_intent(settings)
            else:
                train(settings, reg)
    reg.runs["run-2"].status = "RUNNING"
    state = settings.service_dir("trainer") / "jobs.json"
    ids = ("done", "undecided", "approved", "queued-only")
    state.write_text(json.dumps([_job(i).model_dump(mode="json") for i in ids]))
    runner = JobRunner(lambda r, p: None, state_file=state)  # type: ignore[arg-type, return-value]
    assert {j.state for j in runner.list()} == {"failed"}  # before the registry is asked
    pr.startup_repair(settings, reg, runner.settle_interrupted)
    jobs = {j.id: j for j in runner.list()}
    assert jobs["done"].state == "succeeded" and jobs["done"].result.version == 1  # type: ignore[union-attr]
    assert jobs["approved"].state == "succeeded" and jobs["approved"].result.exported  # type: ignore[union-attr]
    assert jobs["undecided"].state == "failed" and "v2 registered, no gate decision" in str(
        jobs["undecided"].error
    )
    assert jobs["queued-only"].state == "failed" and "no run was logged" in str(jobs["queued-only"].error)
    assert reg.version(2).tags["gate.reason"] == pr.UNKNOWN_DECISION
    assert all("gate.promoted" in v.tags for v in reg.versions())
    assert reg.runs["run-2"].status == "KILLED"
    assert {r.tags[JOB_TAG] for r in reg.find_runs()} == {"done", "undecided", "approved"}
    persisted = {d["id"]: d["state"] for d in json.loads(state.read_text())}
    assert persisted["done"] == "succeeded"


def test_a_job_approved_but_killed_before_the_alias_is_failed_and_untagged(settings: TrainerSettings) -> None:
    reg = InMemoryRegistry()
    train(settings, reg)
    with _as_job("j"):
        settings.trainer_fault_point = "train:staged"
        with pytest.raises(Crash):
            train(settings, reg)
        settings.trainer_fault_point = ""
    pr.reconcile(settings, reg)
    result, error = pr.settle_job(reg, _job("j"))
    assert result is None and "not promoted" in str(error)
    assert reg.version(2).tags["gate.promoted"] == "false"


class _as_job:
    """Run the block as if inside job ``job_id`` (as the runner's worker thread does)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    def __enter__(self) -> None:
        from gradeflow_trainer import jobs

        self.token = jobs._CURRENT_JOB.set(self.job_id)

    def __exit__(self, *exc: Any) -> None:
        from gradeflow_trainer import jobs

        jobs._CURRENT_JOB.reset(self.token)


def test_the_fault_hook_is_off_by_default(settings: TrainerSettings) -> None:
    assert TrainerSettings(admin_token="x" * 20).trainer_fault_point == ""
    pr.fault(settings, "train", "alias")  # nothing happens


def test_the_watch_withdraws_an_export_the_new_registry_does_not_know(settings: TrainerSettings) -> None:
    reg = InMemoryRegistry()
    train(settings, reg)
    assert pr.serving_matches(settings, reg) and pr.watch(settings, reg, busy=lambda: False) == []
    new = InMemoryRegistry(run_prefix="other-store")  # MLflow restarted on an empty store
    assert not pr.serving_matches(settings, new)
    assert pr.watch(settings, new, busy=lambda: True) == []  # a job in flight: left to it
    assert mf.resolve_current(settings.models_path) is not None
    assert pr.watch(settings, new, busy=lambda: False) == [pr.WITHDREW]
    assert mf.resolve_current(settings.models_path) is None and pr.read_marker(settings) is None
    assert pr.serving_matches(settings, new) and pr.watch(settings, new, busy=lambda: False) == []
    train(settings, new)
    assert consistent(settings, new) == 1 and pr.read_marker(settings).run_id == "other-store-1"  # type: ignore[union-attr]


def test_a_running_trainer_follows_a_registry_replaced_under_it(settings: TrainerSettings) -> None:
    """The app's periodic check (RECONCILE_INTERVAL): the registry loses everything while the trainer
    runs; the trainer withdraws the old export, trains a first champion and exports it."""
    import time

    from fastapi.testclient import TestClient

    from gradeflow_trainer.app import create_app

    cfg = settings.model_copy(update={"train_on_start": True, "reconcile_interval": 0.2})
    reg = InMemoryRegistry()

    def wait(what: str, ok: Any, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    with TestClient(create_app(cfg, registry=reg)) as c:
        wait("the first champion", lambda: pr.read_marker(cfg) is not None)
        assert pr.read_marker(cfg).run_id == "run-1"  # type: ignore[union-attr]
        reg.__init__(run_prefix="new-store")  # type: ignore[misc]  # the store is replaced under it
        wait(
            "the new registry's champion exported",
            lambda: (m := pr.read_marker(cfg)) is not None and m.run_id == "new-store-1",
        )
        consistent(cfg, reg)
        jobs = c.get("/jobs").json()
        items = jobs["items"] if isinstance(jobs, dict) else jobs
        assert any("no champion any more" in (j.get("reason") or "") for j in items), items
