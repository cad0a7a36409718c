"""Retrain guards with a fake clock (pure function) and through Monitor with a fake trainer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gradeflow_monitor import guards as g

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def inp(**kw: object) -> g.GuardInput:
    base: dict[str, object] = dict(
        now=T0,
        need=True,
        why="dataset drift",
        auto_retrain=True,
        rows=500,
        min_window_rows=100,
        new_labelled_rows=100,
        min_labelled_rows=50,
        cooldown_seconds=3600,
        job_state=None,
        failure_backoff_seconds=60,
    )
    base.update(kw)
    return g.GuardInput(**base)  # type: ignore[arg-type]


def test_nothing_to_do_without_drift() -> None:
    assert g.decide(inp(need=False), g.GuardState()).action == g.NONE


def test_triggers_when_all_guards_pass() -> None:
    d = g.decide(inp(), g.GuardState())
    assert d.trigger and d.action == g.TRIGGERED


@pytest.mark.parametrize(
    ("kw", "state", "code"),
    [
        ({"auto_retrain": False}, g.GuardState(), g.SKIP_AUTO_OFF),
        ({"rows": 99}, g.GuardState(), g.SKIP_WINDOW),
        ({"job_state": "running"}, g.GuardState(last_job_id="j"), g.SKIP_IN_FLIGHT),
        ({"job_state": "queued"}, g.GuardState(last_job_id="j"), g.SKIP_IN_FLIGHT),
        ({"job_state": "unknown"}, g.GuardState(last_job_id="j"), g.SKIP_IN_FLIGHT),
        ({}, g.GuardState(last_trigger_at=T0 - timedelta(seconds=3599), last_job_id="j"), g.SKIP_COOLDOWN),
        ({"new_labelled_rows": 49}, g.GuardState(), g.SKIP_LABELLED),
        ({}, g.GuardState(failures=1, last_failure_at=T0 - timedelta(seconds=30)), g.SKIP_BACKOFF),
        (
            {"job_state": "succeeded", "model_version": 1, "promoted_version": 2},
            g.GuardState(last_trigger_at=T0 - timedelta(hours=2), last_job_id="j"),
            g.SKIP_SUPERSEDED,
        ),
    ],
)
def test_each_guard_skips_with_its_reason(kw: dict[str, object], state: g.GuardState, code: str) -> None:
    d = g.decide(inp(**kw), state)
    assert not d.trigger
    assert d.code == code
    assert "dataset drift" in d.reason  # the reason keeps what held


def test_cooldown_ends_and_finished_job_does_not_block() -> None:
    state = g.GuardState(last_trigger_at=T0 - timedelta(seconds=3601), last_job_id="j")
    assert g.decide(inp(job_state="succeeded"), state).trigger
    assert g.decide(inp(job_state="failed"), state).trigger


def test_failure_backoff_doubles_and_is_capped() -> None:
    assert g.failure_wait(g.GuardState(failures=1), 60, 3600) == 60
    assert g.failure_wait(g.GuardState(failures=3), 60, 3600) == 240
    assert g.failure_wait(g.GuardState(failures=10), 60, 3600) == 3600
    state = g.GuardState(failures=3, last_failure_at=T0 - timedelta(seconds=200))
    assert g.decide(inp(), state).code == g.SKIP_BACKOFF
    assert g.decide(inp(now=T0 + timedelta(seconds=41)), state).trigger


def test_a_finished_job_that_promoted_the_judged_version_or_older_does_not_block() -> None:
    state = g.GuardState(last_trigger_at=T0 - timedelta(hours=2), last_job_id="j")
    for judged in (2, 3):  # the check already judged the promoted model (or a later one)
        d = g.decide(inp(job_state="succeeded", model_version=judged, promoted_version=2), state)
        assert d.trigger, d
