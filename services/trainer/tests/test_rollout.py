"""The rollout's candidate slot: start, stage, promote, end, expiry, and a crash at every step then the repair.

The fault hook raises in-process instead of SIGKILL (as in test_promotion); the repair is the trainer's
start-up one (``promotion.startup_repair``, which runs ``rollout.reconcile``) on the in-memory registry.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path

import pytest

from gradeflow_shared import manifest as mf
from gradeflow_shared import rollout as sro
from gradeflow_shared.contracts import RetrainRequest
from gradeflow_shared.errors import Conflict
from gradeflow_trainer import history as hist
from gradeflow_trainer import pipeline as P
from gradeflow_trainer import promotion as pr
from gradeflow_trainer import rollout, service
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.registry import InMemoryRegistry

from .conftest import unit_settings
from .test_promotion import GOOD, Crash


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrainerSettings:
    def crash() -> None:
        raise Crash()

    monkeypatch.setattr(pr, "die", crash)
    monkeypatch.setattr(service, "fit", functools.partial(P.fit, candidates=[GOOD]))
    return unit_settings(tmp_path, rows=600, promotion_min_improvement=0.0, rollout="shadow+canary")


def train(settings: TrainerSettings, reg: InMemoryRegistry) -> None:
    service.train_once(settings, RetrainRequest(reason="unit"), registry=reg)


def in_rollout(settings: TrainerSettings, reg: InMemoryRegistry) -> sro.RolloutState:
    train(settings, reg)  # v1: no champion yet, so it is promoted directly
    assert reg.champion_version() == 1 and rollout.active(settings) is None
    train(settings, reg)  # v2: approved -> rollout, the champion stays v1
    state = rollout.active(settings)
    assert state is not None
    return state


def candidate_of(settings: TrainerSettings) -> tuple[int, str] | None:
    link = sro.resolve_candidate(settings.models_path)
    if link is None:
        return None
    m = mf.read_manifest(link)
    return m.version, m.run_id


def test_approved_challenger_enters_shadow_and_champion_stays(settings: TrainerSettings) -> None:
    reg = InMemoryRegistry()
    state = in_rollout(settings, reg)
    assert (state.stage, state.stages, state.candidate_version, state.champion_version) == (
        "shadow",
        ["shadow", "canary"],
        2,
        1,
    )
    assert reg.champion_version() == 1
    cur = mf.read_current(settings.models_path)
    assert cur is not None and cur[1].version == 1  # current still serves the champion
    assert candidate_of(settings) == (2, reg.version(2).run_id)
    assert [e.action for e in reg.promotion_events()] == ["gate", "rollout_start"]
    assert hist.champion_stack(reg.promotion_events()) == [1]
    assert reg.version(2).tags["rollout.stage"] == "shadow"


def test_stage_promote_and_slot_cleared(settings: TrainerSettings) -> None:
    reg = InMemoryRegistry()
    in_rollout(settings, reg)
    assert rollout.set_stage(settings, reg, "canary", "shadow passed").stage == "canary"
    state = rollout.promote(settings, reg, "canary passed")
    assert (state.decision, state.recorded) == ("promoted", True)
    assert reg.champion_version() == 2
    cur = mf.read_current(settings.models_path)
    assert cur is not None and cur[1].version == 2
    assert candidate_of(settings) is None
    assert [e.action for e in reg.promotion_events()] == [
        "gate",
        "rollout_start",
        "rollout_stage",
        "rollout_promote",
    ]
    assert hist.champion_stack(reg.promotion_events()) == [1, 2]
    with pytest.raises(Conflict):
        rollout.promote(settings, reg, "again")


@pytest.mark.parametrize("decision", ["rolled_back", "aborted"])
def test_end_keeps_champion_and_records_reason(settings: TrainerSettings, decision: str) -> None:
    reg = InMemoryRegistry()
    in_rollout(settings, reg)
    state = rollout.end(settings, reg, decision, "the challenger is worse: [-0.9, -0.2]")
    assert state.decision == decision and not state.active
    assert reg.champion_version() == 1 and candidate_of(settings) is None
    ev = reg.promotion_events()[-1]
    assert ev.action == rollout.ACTIONS[decision] and "worse" in ev.reason
    assert reg.version(2).tags["rollout.decision"] == decision
    assert "worse" in reg.version(2).tags["rollout.reason"]
    assert service.history(settings).events()[-1].action == ev.action


def test_expiry(settings: TrainerSettings) -> None:
    reg = InMemoryRegistry()
    state = in_rollout(settings, reg)
    assert rollout.check_expiry(settings, reg) is None  # not yet
    sro.write_state(
        settings.models_path, state.model_copy(update={"expires_at": sro.now() - timedelta(seconds=1)})
    )
    ended = rollout.check_expiry(settings, reg)
    assert ended is not None and ended.decision == "expired" and "ROLLOUT_MAX_AGE_SECONDS" in ended.reason
    assert reg.promotion_events()[-1].action == "rollout_expire" and reg.champion_version() == 1


START_STEPS = ("decided", "staged", "candidate", "state", "event")


@pytest.mark.parametrize("step", START_STEPS)
def test_crash_while_starting_then_repair(settings: TrainerSettings, step: str) -> None:
    reg = InMemoryRegistry()
    train(settings, reg)
    crashing = settings.model_copy(update={"trainer_fault_point": f"rollout_start:{step}"})
    with pytest.raises(Crash):
        train(crashing, reg)
    pr.startup_repair(settings, reg)
    assert reg.champion_version() == 1  # the champion never moved
    cur = mf.read_current(settings.models_path)
    assert cur is not None and cur[1].version == 1
    state = rollout.active(settings)
    if step in ("state", "event"):  # committed: the rollout is in progress, link and history agree
        assert state is not None and candidate_of(settings) == (2, reg.version(2).run_id)
        assert [e.action for e in reg.promotion_events()].count("rollout_start") == 1
    else:  # not committed: no rollout, no candidate link left behind
        assert state is None and candidate_of(settings) is None
    pr.startup_repair(settings, reg)  # idempotent
    assert [e.action for e in reg.promotion_events()].count("rollout_start") == (1 if state else 0)


END_CASES = [
    ("promote", s) for s in ("rollout_end:state", "rollout_end:candidate", "promote:alias", "promote:current")
]
END_CASES += [("rolled_back", s) for s in ("rollout_end:state", "rollout_end:candidate")]


@pytest.mark.parametrize(("op", "step"), END_CASES)
def test_crash_while_ending_then_repair(settings: TrainerSettings, op: str, step: str) -> None:
    reg = InMemoryRegistry()
    in_rollout(settings, reg)
    crashing = settings.model_copy(update={"trainer_fault_point": step})
    with pytest.raises(Crash):
        if op == "promote":
            rollout.promote(crashing, reg, "passed")
        else:
            rollout.end(crashing, reg, "rolled_back", "worse")
    pr.startup_repair(settings, reg)
    state = rollout.read(settings)
    assert state is not None and not state.active and state.recorded
    assert candidate_of(settings) is None
    want = 2 if op == "promote" else 1
    assert reg.champion_version() == want
    cur = mf.read_current(settings.models_path)
    assert cur is not None and cur[1].version == want
    actions = [e.action for e in reg.promotion_events()]
    assert actions.count("rollout_promote" if op == "promote" else "rollout_rollback") == 1
