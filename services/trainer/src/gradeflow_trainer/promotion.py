"""A change of the champion as one transaction, and the start-up repair that finishes or undoes it.

**One source of truth**: the registry's ``champion`` alias says which version is champion;
``MODEL_DIR/current`` (what inference serves) and ``MODEL_DIR/champion.json`` (the marker telling
inference what the registry says, without MLflow) are its materialisation; the registry's promotion
events are the history (``history``). ``publish`` changes the champion in this order, each step
followed by its fault point (``TRAINER_FAULT_POINT=<op>:<step>``):

1. ``intent``: ``MODEL_DIR/.promotion-intent.json`` written atomically (one at a time);
   ``decided`` (a retrain only): the gate's decision tags on the version (an undone change retags it);
2. ``staged``: the target's export under ``versions/``, ``current`` NOT swapped;
3. ``alias``: the registry's alias moved (the commit point);
4. ``event``: the promotion event appended, idempotent by the intent's ``event_id``;
5. ``current``: ``current`` swapped to the staged export;
6. ``marker``: ``champion.json`` written; then the intent is deleted.

``reconcile`` (trainer start, before admin work) reads the intent and the alias: alias moved ->
finish (event, current, marker); alias not moved -> drop the staged export, keep the champion. Then it
makes ``current`` and the marker match the alias by run id (re-export the champion, or withdraw an
export the registry does not know) and rewrites the history views, recording a ``reconcile: ...``
event when the serving side had to change. A crash at any point above leaves a state it repairs; it
is idempotent. ``settle_job``, ``repair_decision_tags`` and ``end_dead_runs`` make job states, gate
tags and MLflow runs tell what a job killed mid-way really did.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, Field

from gradeflow_shared import manifest as mf
from gradeflow_shared.contracts import GateDecision, Job, PromotionEvent, TrainResult
from gradeflow_shared.datasets import ColumnSpec
from gradeflow_shared.errors import Conflict, ExportError, GradeflowError

from . import history as hist
from .config import TrainerSettings
from .export import export_model, kept_export
from .pipeline import prepare_frame
from .registry import ALIAS, Registry, VersionInfo

logger = logging.getLogger(__name__)

INTENT_FILE = ".promotion-intent.json"
MARKER_FILE = "champion.json"
STEPS = ("intent", "decided", "staged", "alias", "event", "current", "marker")
Op = Literal["train", "promote", "rollback"]
UNKNOWN_DECISION = "decision: unknown (job died)"

# Set while the start-up reconciliation runs: champion changes wait for it (see ``wait_reconciled``).
RECONCILED = threading.Event()
WITHDREW = "withdrew the export in MODEL_DIR/current: the registry has no champion"
RECONCILED.set()


# ------------------------------------------------------------------ fault points
def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


die: Callable[[], None] = _die  # unit tests replace it by a raise


def fault(settings: TrainerSettings, op: str, step: str) -> None:
    """The crash-test hook: SIGKILL this process when TRAINER_FAULT_POINT names ``<op>:<step>``."""
    if settings.trainer_fault_point and settings.trainer_fault_point == f"{op}:{step}":
        logger.warning("TRAINER_FAULT_POINT %s reached: killing the trainer", settings.trainer_fault_point)
        die()


# ------------------------------------------------------------------ intent and marker files
class Intent(BaseModel):
    """What an unfinished champion change was doing (``MODEL_DIR/.promotion-intent.json``)."""

    op: Op
    action: Literal["promote", "rollback", "gate", "rollout_promote"]
    model_name: str
    from_version: int | None
    to_version: int
    to_run_id: str
    job_id: str | None = None
    reason: str
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)

    def event(self) -> PromotionEvent:
        return hist.make_event(
            self.model_name,
            self.to_version,
            self.from_version,
            self.action,
            self.reason,
            self.event_id,
            self.at,
        )


class Marker(BaseModel):
    """``MODEL_DIR/champion.json``: what the registry's alias says, readable without MLflow."""

    model_name: str
    version: int
    run_id: str
    alias: str = ALIAS
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_intent(settings: TrainerSettings) -> Intent | None:
    path = settings.models_path / INTENT_FILE
    try:
        return Intent.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:  # a torn write cannot happen (atomic); a hand-edited file can
        logger.error("%s unreadable (%s): ignored", path, exc)
        return None


def clear_intent(settings: TrainerSettings) -> None:
    with contextlib.suppress(FileNotFoundError):
        (settings.models_path / INTENT_FILE).unlink()


def read_marker(settings: TrainerSettings) -> Marker | None:
    try:
        return Marker.model_validate_json((settings.models_path / MARKER_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


def write_marker(settings: TrainerSettings, model_name: str, version: int, run_id: str) -> None:
    marker = Marker(model_name=model_name, version=version, run_id=run_id)
    _write_atomic(settings.models_path / MARKER_FILE, marker.model_dump_json(indent=2))


# ------------------------------------------------------------------ the transaction
def history(settings: TrainerSettings) -> hist.History:
    return hist.History(settings.service_dir("trainer"))


def wait_reconciled(settings: TrainerSettings) -> None:
    """Champion changes wait for the start-up reconciliation (503 when it does not end in time)."""
    if not RECONCILED.wait(settings.mlflow_wait + 60):
        raise Conflict("the trainer's start-up reconciliation is still running; try again shortly")


def publish(
    settings: TrainerSettings,
    registry: Registry,
    intent: Intent,
    stage: Callable[[], Path],
    decide: Callable[[], None] | None = None,
) -> tuple[PromotionEvent, Path]:
    """Make ``intent.to_version`` the champion (steps in the module docstring). ``decide()`` tags the
    gate's decision (a retrain); ``stage()`` writes or finds the target's export under ``versions/``
    without swapping ``current``. The caller holds the champion lock."""
    op = intent.op
    if read_intent(settings) is not None:  # one at a time: repair a change the start-up could not repair
        reconcile(settings, registry)
    _write_atomic(settings.models_path / INTENT_FILE, intent.model_dump_json(indent=2))
    fault(settings, op, "intent")
    try:
        if decide is not None:
            decide()
            fault(settings, op, "decided")
        export_dir = stage()
    except GradeflowError:
        clear_intent(settings)  # refused before the alias moved (e.g. the export's checks): nothing changed
        raise
    fault(settings, op, "staged")
    registry.set_champion(intent.to_version)
    fault(settings, op, "alias")
    event = hist.record_once(registry, history(settings), intent.event())
    fault(settings, op, "event")
    mf.point_current(settings.models_path, export_dir, reason=intent.reason, version=intent.to_version)
    mf.prune(settings.models_path, keep=settings.export_keep)
    fault(settings, op, "current")
    write_marker(settings, intent.model_name, intent.to_version, intent.to_run_id)
    fault(settings, op, "marker")
    clear_intent(settings)
    return event, export_dir


def stage_export(settings: TrainerSettings, registry: Registry, mv: VersionInfo, reason: str) -> Path:
    """An export of version ``mv`` under ``versions/`` (``current`` untouched): a kept one made from the
    same run (sha256-checked), else rebuilt from the registry's model and the run's export artifacts."""
    kept = kept_export(settings.models_path, mv.version, mv.run_id)
    if kept is not None:
        try:
            mf.verify_files(kept, mf.read_manifest(kept), keys=("model", "onnx"))
            return kept
        except ExportError as exc:
            logger.warning("kept export %s unusable (%s); rebuilding from MLflow", kept, exc.message)
    with tempfile.TemporaryDirectory(prefix="gradeflow-export-") as tmpd:
        tmp = Path(tmpd)
        pipe = registry.load_model(mv.version, tmp / "model")
        art = registry.export_artifacts(mv.run_id, tmp / "art")
        columns = [ColumnSpec.model_validate(c) for c in json.loads((art / "columns.json").read_text())]
        meta = json.loads((art / "meta.json").read_text())
        ref = pd.read_csv(art / "reference.csv")
        target = meta["target"]
        return export_model(
            settings.models_path,
            pipe,
            columns,
            prepare_frame(ref, columns),
            ref[target].astype(float),
            target=target,
            model_name=registry.model_name,
            version=mv.version,
            run_id=mv.run_id,
            metrics=meta.get("metrics", {}),
            dataset=meta.get("dataset", ""),
            fingerprint=meta.get("fingerprint", ""),
            reason=reason,
            reference_rows=settings.reference_rows,
            keep=settings.export_keep,
            target_min=meta.get("target_min"),
            target_max=meta.get("target_max"),
            model_uri=mv.source,
            swap_current=False,
        )


# ------------------------------------------------------------------ start-up repair
def _drop_staged(settings: TrainerSettings, intent: Intent) -> None:
    """Remove the exports the unfinished change staged (never the one ``current`` points at)."""
    current = mf.resolve_current(settings.models_path)
    for p in mf.list_exports(settings.models_path):
        if not p.name.startswith(f"v{intent.to_version:06d}-") or p.resolve() == current:
            continue
        with contextlib.suppress(ExportError):
            if mf.read_manifest(p).run_id == intent.to_run_id:
                shutil.rmtree(p, ignore_errors=True)
    for p in settings.models_path.glob(".staging-*"):  # a writer killed mid-export (none runs now)
        shutil.rmtree(p, ignore_errors=True)


def _settle_intent(settings: TrainerSettings, registry: Registry, intent: Intent, alias: int | None) -> str:
    if alias == intent.to_version:
        hist.record_once(registry, history(settings), intent.event())
        return f"finished the interrupted {intent.op} to v{intent.to_version} (the alias had moved)"
    _drop_staged(settings, intent)
    if intent.op == "train":
        registry.set_version_tags(
            intent.to_version,
            {
                "gate.promoted": "false",
                "gate.reason": "gate approved it, but the trainer died before the alias moved: not promoted "
                f"({f'champion stays v{alias}' if alias is not None else 'no champion'})",
            },
        )
    return f"undid the interrupted {intent.op} to v{intent.to_version} (the alias stayed on v{alias})"


def _current(settings: TrainerSettings) -> mf.Manifest | None:
    """The manifest ``current`` points at (None: nothing, or an unreadable export)."""
    try:
        cur = mf.read_current(settings.models_path)
    except ExportError as exc:
        logger.warning("MODEL_DIR/current unreadable: %s", exc.message)
        return None
    return cur[1] if cur else None


def _withdraw(settings: TrainerSettings) -> bool:
    changed = False
    link = settings.models_path / mf.CURRENT
    if link.is_symlink() or link.exists():
        link.unlink()
        changed = True
    with contextlib.suppress(FileNotFoundError):
        (settings.models_path / MARKER_FILE).unlink()
    return changed


def reconcile(settings: TrainerSettings, registry: Registry) -> list[str]:
    """Bring the intent, ``current``, the marker and the history views back in line with the registry's
    alias (see the module docstring). Returns what it changed (empty: all was consistent)."""
    done: list[str] = []
    intent = read_intent(settings)
    alias = registry.champion_version()
    if intent is not None:
        done.append(_settle_intent(settings, registry, intent, alias))
        clear_intent(settings)
    serving: str | None = None
    if alias is None:
        if _withdraw(settings):
            serving = WITHDREW
    else:
        mv = registry.version(alias)
        cur = _current(settings)
        if cur is None or (cur.version, cur.run_id) != (alias, mv.run_id):
            was = f"v{cur.version} run {cur.run_id}" if cur else "nothing"
            reason = f"reconcile: current served {was}, the registry's champion is v{alias} run {mv.run_id}"
            export_dir = stage_export(settings, registry, mv, reason)
            mf.point_current(settings.models_path, export_dir, reason=reason, version=alias)
            serving = reason
        marker = read_marker(settings)
        if marker is None or (marker.version, marker.run_id, marker.model_name) != (
            alias,
            mv.run_id,
            registry.model_name,
        ):
            write_marker(settings, registry.model_name, alias, mv.run_id)
    events = registry.promotion_events()
    stack = hist.champion_stack(events)
    head = stack[-1] if stack else None
    if alias is not None and (head != alias or (serving and not done)):
        why = serving or f"reconcile: the history's champion was v{head}, the registry's alias is v{alias}"
        reason = why if why.startswith("reconcile:") else f"reconcile: {why}"
        event = hist.make_event(
            registry.model_name, alias, head, "promote", reason, f"reconcile-{uuid.uuid4().hex}"
        )
        hist.record_once(registry, history(settings), event)
        events = registry.promotion_events()
    if serving:
        done.append(serving)
    hist.write_views(registry, history(settings), events, alias)
    for line in done:
        logger.warning(line if line.startswith("reconcile:") else f"reconcile: {line}")
    logger.info(
        "reconciled: champion of %s is v%s%s", registry.model_name, alias, "" if done else " (consistent)"
    )
    return done


def serving_matches(settings: TrainerSettings, registry: Registry) -> bool:
    """True when champion.json names the registry's champion (model, version and run id), or when
    neither the registry nor MODEL_DIR has one. A cheap check: the alias, one version, one file."""
    alias = registry.champion_version()
    marker = read_marker(settings)
    if alias is None:
        return marker is None and mf.resolve_current(settings.models_path) is None
    if marker is None:
        return False
    run_id = registry.version(alias).run_id
    return (marker.model_name, marker.version, marker.run_id) == (registry.model_name, alias, run_id)


def watch(settings: TrainerSettings, registry: Registry, busy: Callable[[], bool]) -> list[str]:
    """One periodic check of a running trainer (``RECONCILE_INTERVAL``): when what is served no longer
    matches the registry's alias and no job is in flight, ``reconcile``. Returns what it changed; a
    caller that sees the export withdrawn (the registry has no champion any more) may train."""
    if busy() or serving_matches(settings, registry):
        return []
    from .service import CHAMPION_LOCK  # service imports this module

    with CHAMPION_LOCK:  # a promotion may have finished meanwhile: look again under the lock
        if busy() or serving_matches(settings, registry):
            return []
        return reconcile(settings, registry)


# ------------------------------------------------------------------ gate tags, runs and jobs of dead jobs
def repair_decision_tags(registry: Registry) -> list[int]:
    """Tag every registered version that has no gate decision (its job died before deciding)."""
    fixed: list[int] = []
    for v in registry.versions():
        if "gate.promoted" not in v.tags:
            registry.set_version_tags(
                v.version, {"gate.promoted": "unknown", "gate.reason": UNKNOWN_DECISION}
            )
            fixed.append(v.version)
    if fixed:
        logger.warning("versions %s had no gate decision: tagged '%s'", fixed, UNKNOWN_DECISION)
    return fixed


def end_dead_runs(registry: Registry, alive_job: str | None) -> list[str]:
    """End the runs left RUNNING by jobs that died (``alive_job``: the job running now, if any)."""
    ended: list[str] = []
    for run in registry.find_runs(running=True):
        if alive_job and run.tags.get("gradeflow.job_id") == alive_job:
            continue
        registry.end_run(run.run_id, "KILLED")
        ended.append(run.run_id)
    if ended:
        logger.warning("ended %d MLflow runs left RUNNING by dead jobs (KILLED): %s", len(ended), ended)
    return ended


def _decision(v: VersionInfo) -> GateDecision | None:
    raw = v.tags.get("gate.decision")
    if not raw:
        return None
    try:
        return GateDecision.model_validate_json(raw)
    except ValueError:
        return None


def settle_job(registry: Registry, job: Job) -> tuple[TrainResult | None, str | None]:
    """What an interrupted job really did, from the registry: ``(result, None)`` when it got as far as a
    final gate decision (and, if approved, the promotion), else ``(None, why it failed)``."""
    died = job.error or f"interrupted while {job.stage or 'queued'}"
    run_ids = {r.run_id for r in registry.find_runs(job_id=job.id)}
    if not run_ids:
        return None, f"{died}; no run was logged"
    mine = [v for v in registry.versions() if v.run_id in run_ids]
    if not mine:
        return None, f"{died}; run {sorted(run_ids)[0]} was logged, no version registered"
    v = mine[-1]
    decision = _decision(v)
    if decision is None or v.tags.get("gate.promoted") == "unknown":
        return None, f"{died}; v{v.version} registered, no gate decision"
    promoted = any(
        e.version == v.version and e.action in ("gate", "rollout_start") for e in registry.promotion_events()
    )
    if decision.promoted and not promoted:
        return (
            None,
            f"{died}; v{v.version} approved by the gate but not promoted "
            "(the trainer died before the alias moved)",
        )
    result = TrainResult(
        run_id=v.run_id,
        version=v.version,
        model_name=registry.model_name,
        metrics=decision.challenger,
        decision=decision,
        exported=promoted,
    )
    return result, None


def startup_repair(
    settings: TrainerSettings,
    registry: Registry,
    settle: Callable[[Callable[[Job], tuple[TrainResult | None, str | None]]], None] | None = None,
    alive_job: str | None = None,
) -> list[str]:
    """Everything the trainer repairs at start: the champion (``reconcile``), gate tags, job states, runs."""
    from . import rollout  # rollout imports this module

    done = reconcile(settings, registry)
    done += rollout.reconcile(settings, registry)
    repair_decision_tags(registry)
    if settle is not None:
        settle(lambda job: settle_job(registry, job))
    try:
        end_dead_runs(registry, alive_job)
    except GradeflowError as exc:
        logger.warning("runs of dead jobs not ended: %s", exc.message)
    return done
