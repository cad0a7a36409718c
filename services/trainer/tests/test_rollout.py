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


# ------------------------------------------------------------------ manual champion changes during a rollout
def two_champions_then_rollout(settings: TrainerSettings, reg: InMemoryRegistry) -> sro.RolloutState:
    """v1 then v2 champions (promoted directly), then v3 in a rollout next to v2."""
    direct = settings.model_copy(update={"rollout": "direct"})
    train(direct, reg)
    train(direct, reg)
    assert reg.champion_version() == 2 and rollout.active(settings) is None
    train(settings, reg)
    state = rollout.active(settings)
    assert state is not None and (state.candidate_version, state.champion_version) == (3, 2)
    return state


def served(settings: TrainerSettings) -> int:
    cur = mf.read_current(settings.models_path)
    assert cur is not None
    return cur[1].version


def test_manual_promote_of_another_version_supersedes_the_rollout(settings: TrainerSettings) -> None:
    reg = InMemoryRegistry()
    two_champions_then_rollout(settings, reg)
    out = service.promote(settings, 1, reason="back to the first", registry=reg)
    assert (out["version"], out["previous_version"], out["action"]) == (1, 2, "promote")
    ended = out["rollout"]
    assert ended["decision"] == "aborted" and ended["recorded"] and ended["candidate_version"] == 3
    assert ended["reason"] == "superseded by manual promote of v1: back to the first"
    assert rollout.active(settings) is None and candidate_of(settings) is None
    assert reg.champion_version() == 1 and served(settings) == 1
    events = reg.promotion_events()
    assert [(e.action, e.version) for e in events[-2:]] == [("rollout_abort", 3), ("promote", 1)]
    assert "superseded by manual promote of v1" in events[-2].reason
    assert reg.version(3).tags["rollout.decision"] == "aborted"
    assert "superseded by manual promote of v1" in reg.version(3).tags["rollout.reason"]
    assert hist.champion_stack(events) == [1, 2, 1]


def test_manual_promote_of_the_candidate_finishes_the_rollout(settings: TrainerSettings) -> None:
    reg = InMemoryRegistry()
    two_champions_then_rollout(settings, reg)
    out = service.promote(settings, 3, reason="looks good", registry=reg)
    assert (out["version"], out["previous_version"]) == (3, 2)
    assert out["rollout"]["decision"] == "promoted" and "manual promote of v3" in out["rollout"]["reason"]
    assert out["event"]["action"] == "rollout_promote" and out["event"]["version"] == 3
    assert reg.champion_version() == 3 and served(settings) == 3 and candidate_of(settings) is None
    assert [e.action for e in reg.promotion_events()].count("rollout_promote") == 1
    assert reg.version(3).tags["rollout.decision"] == "promoted"


def test_manual_rollback_aborts_the_rollout_then_rolls_back(settings: TrainerSettings) -> None:
    reg = InMemoryRegistry()
    two_champions_then_rollout(settings, reg)
    out = service.rollback(settings, reason="v2 misbehaves", registry=reg)
    assert (out["version"], out["previous_version"], out["action"]) == (1, 2, "rollback")
    assert out["rollout"]["decision"] == "aborted"
    assert out["rollout"]["reason"] == "aborted by manual rollback to v1: v2 misbehaves"
    assert reg.champion_version() == 1 and served(settings) == 1 and candidate_of(settings) is None
    events = reg.promotion_events()
    assert [(e.action, e.version) for e in events[-2:]] == [("rollout_abort", 3), ("rollback", 1)]
    assert reg.version(3).tags["rollout.decision"] == "aborted"


def test_manual_promote_that_fails_leaves_the_rollout_running(settings: TrainerSettings) -> None:
    from gradeflow_shared.errors import NotFound

    reg = InMemoryRegistry()
    state = two_champions_then_rollout(settings, reg)
    with pytest.raises(NotFound):
        service.promote(settings, 99, registry=reg)
    assert rollout.active(settings) == state and candidate_of(settings) == (3, reg.version(3).run_id)
    assert reg.champion_version() == 2


def test_promote_without_a_rollout_answers_no_rollout(settings: TrainerSettings) -> None:
    reg = InMemoryRegistry()
    train(settings, reg)
    train(settings.model_copy(update={"rollout": "direct"}), reg)
    out = service.promote(settings, 1, registry=reg)
    assert out["rollout"] is None and reg.champion_version() == 1


def test_retrain_during_a_rollout_supersedes_it(settings: TrainerSettings) -> None:
    reg = InMemoryRegistry()
    first = two_champions_then_rollout(settings, reg)
    train(settings, reg)  # v4 approved: a new rollout replaces the one of v3
    old = [e for e in reg.promotion_events() if e.version == 3][-1]
    assert old.action == "rollout_abort" and "superseded by v4" in old.reason
    state = rollout.active(settings)
    assert state is not None and state.rollout_id != first.rollout_id
    assert (state.candidate_version, state.champion_version) == (4, 2)
    assert candidate_of(settings) == (4, reg.version(4).run_id) and reg.champion_version() == 2


def test_direct_retrain_during_a_rollout_ends_it(settings: TrainerSettings) -> None:
    """ROLLOUT switched to direct (a restart) while a rollout runs: the next approved challenger is
    promoted at once and the rollout is recorded as superseded, not left to expire."""
    reg = InMemoryRegistry()
    two_champions_then_rollout(settings, reg)
    train(settings.model_copy(update={"rollout": "direct"}), reg)
    assert reg.champion_version() == 4 and served(settings) == 4
    assert rollout.active(settings) is None and candidate_of(settings) is None
    ended = rollout.read(settings)
    assert ended is not None and ended.decision == "aborted" and ended.recorded
    assert "superseded by v4" in ended.reason and "ROLLOUT=direct" in ended.reason
    assert reg.version(3).tags["rollout.decision"] == "aborted"
