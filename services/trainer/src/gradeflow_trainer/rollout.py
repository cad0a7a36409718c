"""Progressive delivery on the trainer's side: start, advance, promote, end and repair a rollout.

The trainer owns the registry alias and the model volume, so it owns the rollout too. A challenger the
gate approves with ``ROLLOUT`` != direct (and a champion to compare it with) is not made champion: its
export goes to ``MODEL_DIR/candidate`` and ``rollout.json`` says which stage it is in
(``gradeflow_shared.rollout``). The registry's champion alias stays on the old version until the
promotion, which is an ordinary champion change (``promotion.publish``, action ``rollout_promote``).

Steps, each followed by a fault point ``TRAINER_FAULT_POINT=<op>:<step>``:

* start (``rollout_start``): ``decided`` (the gate's tags) -> ``staged`` (the export under ``versions/``)
  -> ``candidate`` (the link) -> ``state`` (``rollout.json``: the commit point) -> ``event`` (history
  event + version tags);
* end (rollback / abort / expire; ``rollout_end``): ``state`` (the decision in ``rollout.json``: the commit
  point) -> ``candidate`` (link removed) -> event + tags, then ``recorded`` in the state.

``reconcile`` (trainer start) finishes or undoes whatever a crash interrupted: a link without an active
state is removed; an active state whose link is missing is re-pointed (or aborted when its export is
gone); a decided state not yet recorded is recorded; an active state whose version already holds the
champion alias (a promotion interrupted after the alias moved) is finished as promoted.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

from gradeflow_shared import manifest as mf
from gradeflow_shared import rollout as ro
from gradeflow_shared.errors import Conflict, ExportError

from . import history as hist
from . import promotion as pr
from .config import TrainerSettings
from .export import kept_export
from .registry import TAG_MAX, Registry

logger = logging.getLogger(__name__)

ACTIONS = {
    "promoted": "rollout_promote",
    "rolled_back": "rollout_rollback",
    "aborted": "rollout_abort",
    "expired": "rollout_expire",
}


def _lock() -> Any:
    from .service import CHAMPION_LOCK  # service imports this module

    return CHAMPION_LOCK


def read(settings: TrainerSettings) -> ro.RolloutState | None:
    return ro.read_state(settings.models_path)


def active(settings: TrainerSettings) -> ro.RolloutState | None:
    state = read(settings)
    return state if state is not None and state.active else None


def require_active(settings: TrainerSettings) -> ro.RolloutState:
    state = active(settings)
    if state is None:
        raise Conflict("no rollout is in progress", details={"rollout": None})
    return state


def _record(
    registry: Registry, settings: TrainerSettings, state: ro.RolloutState, action: str, eid: str
) -> None:
    """The history event of ``action`` (idempotent by ``eid``) and the candidate version's rollout tags."""
    event = hist.make_event(
        state.model_name,
        state.candidate_version,
        state.champion_version,
        action,
        state.reason or action,
        f"{state.rollout_id}-{eid}",
    )
    hist.record_once(registry, pr.history(settings), event)
    tags = {
        "rollout.id": state.rollout_id,
        "rollout.stage": state.stage,
        "rollout.decision": state.decision or "in progress",
        "rollout.reason": state.reason[:TAG_MAX],
    }
    if state.evidence:
        tags["rollout.evidence"] = json.dumps(state.evidence, default=str, sort_keys=True)[:TAG_MAX]
    registry.set_version_tags(state.candidate_version, tags)


# ------------------------------------------------------------------ start
def start(
    settings: TrainerSettings,
    registry: Registry,
    *,
    version: int,
    run_id: str,
    reason: str,
    stage_export: Any,
    decide: Any = None,
) -> tuple[ro.RolloutState, Path]:
    """Put ``version`` under rollout next to the champion (the caller holds the champion lock).

    A rollout still in progress is ended (aborted: superseded by this challenger) once the challenger's
    export is staged, so a challenger whose export fails leaves it running."""
    champ = registry.champion_version()
    champ_run = registry.version(champ).run_id if champ is not None else None
    stages = ro.planned_stages(settings.rollout)
    if decide is not None:
        decide()
        pr.fault(settings, "rollout_start", "decided")
    export_dir: Path = stage_export()
    if active(settings) is not None:
        end(
            settings,
            registry,
            "aborted",
            f"superseded by v{version}, a newer challenger approved by the gate",
        )
    pr.fault(settings, "rollout_start", "staged")
    ro.point_candidate(settings.models_path, export_dir)
    pr.fault(settings, "rollout_start", "candidate")
    state = ro.RolloutState.begin(
        uuid.uuid4().hex[:12],
        registry.model_name,
        (champ, champ_run),
        (version, run_id),
        stages,
        shadow_share=settings.rollout_shadow_share,
        canary_share=settings.rollout_canary_share,
        max_age_seconds=settings.rollout_max_age_seconds,
        reason=f"{reason}; rollout {settings.rollout} started in {stages[0]}",
    )
    ro.write_state(settings.models_path, state)
    pr.fault(settings, "rollout_start", "state")
    _record(registry, settings, state, "rollout_start", "start")
    pr.fault(settings, "rollout_start", "event")
    logger.info("rollout %s: v%d in %s next to champion v%s", state.rollout_id, version, state.stage, champ)
    return state, export_dir


# ------------------------------------------------------------------ stage, evidence
def set_stage(settings: TrainerSettings, registry: Registry, stage: str, reason: str) -> ro.RolloutState:
    """Move the rollout to ``stage`` (shadow or canary); the evidence starts again for the new stage."""
    with _lock():
        state = require_active(settings)
        if stage == state.stage:
            return state
        at = ro.now()
        state = state.model_copy(
            update={"stage": stage, "stage_started_at": at, "evidence": {}, "reason": reason}
        )
        ro.write_state(settings.models_path, state)
        _record(registry, settings, state, "rollout_stage", f"stage-{stage}-{at.timestamp():.0f}")
    logger.info("rollout %s: v%d now in %s (%s)", state.rollout_id, state.candidate_version, stage, reason)
    return state


def record_evidence(settings: TrainerSettings, rollout_id: str, evidence: dict[str, Any]) -> ro.RolloutState:
    """Keep the monitor's latest evaluation in the state (``GET /rollout`` shows it)."""
    with _lock():
        state = require_active(settings)
        if state.rollout_id != rollout_id:
            raise Conflict(
                f"rollout {rollout_id} is not the one in progress ({state.rollout_id})",
                details={"rollout_id": state.rollout_id},
            )
        state = state.model_copy(update={"evidence": evidence})
        ro.write_state(settings.models_path, state)
        return state


# ------------------------------------------------------------------ promote
def promote(settings: TrainerSettings, registry: Registry, reason: str) -> ro.RolloutState:
    """Make the candidate the champion: the alias moves, its export becomes ``current``, the slot clears."""
    pr.wait_reconciled(settings)
    with _lock():
        state = require_active(settings)
        state = state.model_copy(update={"reason": reason})
        intent = pr.Intent(
            op="promote",
            action="rollout_promote",
            model_name=registry.model_name,
            from_version=registry.champion_version(),
            to_version=state.candidate_version,
            to_run_id=state.candidate_run_id,
            reason=reason,
            event_id=f"{state.rollout_id}-promote",
        )

        def stage() -> Path:
            export_dir = ro.resolve_candidate(settings.models_path) or kept_export(
                settings.models_path, state.candidate_version, state.candidate_run_id
            )
            if export_dir is None:
                raise ExportError(f"the export of candidate v{state.candidate_version} is gone")
            mf.verify_files(export_dir, mf.read_manifest(export_dir), keys=("model", "onnx"))
            return export_dir

        pr.publish(settings, registry, intent, stage)
        return _finish(settings, registry, state, "promoted", reason)


def _finish(
    settings: TrainerSettings, registry: Registry, state: ro.RolloutState, decision: str, reason: str
) -> ro.RolloutState:
    """The end's steps after the decision (see the module docstring)."""
    state = state.model_copy(update={"decision": decision, "decided_at": ro.now(), "reason": reason})
    ro.write_state(settings.models_path, state)
    pr.fault(settings, "rollout_end", "state")
    ro.clear_candidate(settings.models_path)
    pr.fault(settings, "rollout_end", "candidate")
    if decision != "promoted":  # a promotion's event was written by promotion.publish
        _record(registry, settings, state, ACTIONS[decision], "end")
    else:
        registry.set_version_tags(
            state.candidate_version, {"rollout.decision": decision, "rollout.reason": reason[:TAG_MAX]}
        )
    state = state.model_copy(update={"recorded": True})
    ro.write_state(settings.models_path, state)
    logger.warning(
        "rollout %s: v%d %s (%s); champion v%s",
        state.rollout_id,
        state.candidate_version,
        decision,
        reason,
        registry.champion_version(),
    )
    return state


def end(settings: TrainerSettings, registry: Registry, decision: str, reason: str) -> ro.RolloutState:
    """Roll back, abort or expire: the champion stays, the candidate leaves the volume, the reason is
    recorded in the history and on the candidate version's tags."""
    with _lock():
        return _finish(settings, registry, require_active(settings), decision, reason)


def check_expiry(settings: TrainerSettings, registry: Registry) -> ro.RolloutState | None:
    """Expire the rollout in progress when it is past ``expires_at`` (the trainer's periodic check)."""
    state = active(settings)
    if state is None or ro.now() < state.expires_at:
        return None
    n = state.evidence.get("n", 0)
    return end(
        settings,
        registry,
        "expired",
        f"no decision after ROLLOUT_MAX_AGE_SECONDS={settings.rollout_max_age_seconds:g} "
        f"({n} labelled comparisons in {state.stage}): the champion stays",
    )


# ------------------------------------------------------------------ repair
def reconcile(settings: TrainerSettings, registry: Registry) -> list[str]:
    """Finish or undo a rollout change a crash interrupted (see the module docstring)."""
    done: list[str] = []
    model_dir = settings.models_path
    state = read(settings)
    link = ro.resolve_candidate(model_dir)
    if state is None or not state.active:
        if state is not None and not state.recorded:
            _finish(settings, registry, state, state.decision or "aborted", state.reason)
            done.append(f"recorded the interrupted end of rollout {state.rollout_id}")
        elif ro.clear_candidate(model_dir):
            done.append("removed a candidate link without a rollout in progress")
    else:
        if registry.champion_version() == state.candidate_version:
            _finish(
                settings, registry, state, "promoted", state.reason or "promoted (finished after a restart)"
            )
            done.append(f"finished the interrupted promotion of rollout {state.rollout_id}")
        else:
            ok = False
            if link is not None:
                try:
                    m = mf.read_manifest(link)
                    ok = (m.version, m.run_id) == (state.candidate_version, state.candidate_run_id)
                except ExportError:
                    ok = False
            if not ok:
                kept = kept_export(model_dir, state.candidate_version, state.candidate_run_id)
                if kept is not None:
                    ro.point_candidate(model_dir, kept)
                    done.append(f"re-pointed the candidate link of rollout {state.rollout_id}")
                else:
                    _finish(settings, registry, state, "aborted", "the candidate's export is gone")
                    done.append(f"aborted rollout {state.rollout_id}: its export is gone")
            if read(settings) == state:  # still active: make sure its start is in the history
                _record(registry, settings, state, "rollout_start", "start")
    for line in done:
        logger.warning("reconcile: %s", line)
    return done


def describe(settings: TrainerSettings) -> dict[str, Any]:
    """``GET /rollout``: the last rollout (active or decided) and the mode."""
    state = read(settings)
    return {
        "mode": settings.rollout,
        "active": bool(state and state.active),
        "rollout": state.model_dump(mode="json") if state else None,
    }
