"""The monitor's part of a progressive rollout: judge it on live labels and tell the trainer what to do.

Every ROLLOUT_INTERVAL_SECONDS (its own scheduler job), when the trainer's ``GET /rollout`` says a rollout is
in progress:

1. the labelled predictions logged since the stage started (``GET /predictions?labelled=true&since=``)
   give the comparisons (``differences``): in shadow, the champion's answer and the challenger's shadow
   prediction on the same request; in canary, the two arms' records, paired in arrival order;
2. ``sequential.decide`` gives promote / roll back / continue at the stated error rates;
3. inference's per-arm stats (``GET /rollout`` of inference) abort a challenger whose error rate or p99
   latency regressed (``guard``), whatever the labels say;
4. the trainer is told: ``/rollout/stage`` (shadow passed, canary next), ``/rollout/promote``,
   ``/rollout/abort`` (decision rolled_back or aborted), else ``/rollout/evidence`` (the evidence so far).

Each evaluation is appended to ``DATA_DIR/monitor/rollouts/<rollout id>.jsonl`` (the rollout report page).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from gradeflow_shared.contracts import LoggedPrediction, PredictionPage
from gradeflow_shared.errors import GradeflowError
from gradeflow_shared.http import ServiceClient

from . import sequential
from .config import MonitorSettings

logger = logging.getLogger(__name__)

ROLLOUT_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
MAX_ROWS = 50_000  # labelled rows read per evaluation (a bound, not a sample)


def differences(rows: list[LoggedPrediction], rollout: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The comparisons of the stage (``d = |champion error| - |challenger error|``) and both models' MAE."""
    champ_v, cand_v, stage = rollout["champion_version"], rollout["candidate_version"], rollout["stage"]
    if stage == "shadow":
        pairs = [
            (abs(r.prediction - r.actual), abs(r.shadow_prediction - r.actual))
            for r in rows
            if r.actual is not None
            and r.arm == "champion"
            and r.model_version == champ_v
            and r.shadow_version == cand_v
            and r.shadow_prediction is not None
        ]
        ce = np.array([p[0] for p in pairs], dtype=float)
        ke = np.array([p[1] for p in pairs], dtype=float)
    else:
        ce = np.array(
            [
                abs(r.prediction - r.actual)
                for r in rows
                if r.actual is not None and r.arm == "champion" and r.model_version == champ_v
            ],
            dtype=float,
        )
        ke = np.array(
            [
                abs(r.prediction - r.actual)
                for r in rows
                if r.actual is not None and r.arm == "candidate" and r.model_version == cand_v
            ],
            dtype=float,
        )
    summary = {
        "champion_labelled": len(ce),
        "candidate_labelled": len(ke),
        "champion_mae": float(ce.mean()) if len(ce) else None,
        "candidate_mae": float(ke.mean()) if len(ke) else None,
    }
    n = min(len(ce), len(ke))
    return ce[:n] - ke[:n], summary


def guard(arms: dict[str, Any], s: MonitorSettings) -> str | None:
    """Why the challenger must be aborted from inference's per-arm stats (error rate, p99), or None."""
    champ, cand = arms.get("champion") or {}, arms.get("candidate") or {}
    if (cand.get("records") or 0) >= s.rollout_min_requests:
        cr, kr = champ.get("error_rate") or 0.0, cand.get("error_rate") or 0.0
        if kr - cr > s.rollout_max_error_rate_increase:
            return (
                f"the challenger's error rate {kr:.2%} exceeds the champion's {cr:.2%} by more than "
                f"ROLLOUT_MAX_ERROR_RATE_INCREASE={s.rollout_max_error_rate_increase:g}"
            )
    cp, kp = champ.get("p99_ms"), cand.get("p99_ms")
    enough = (
        min(champ.get("latency_samples") or 0, cand.get("latency_samples") or 0) >= s.rollout_min_requests
    )
    if (
        enough
        and cp is not None
        and kp is not None
        and kp > s.rollout_p99_ratio * cp
        and kp - cp > s.rollout_p99_min_ms
    ):
        return (
            f"the challenger's p99 latency {kp:.1f} ms exceeds {s.rollout_p99_ratio:g} x the champion's "
            f"{cp:.1f} ms (ROLLOUT_P99_RATIO)"
        )
    return None


class RolloutJudge:
    """Evaluates the rollout in progress and moves it (see the module docstring)."""

    def __init__(self, settings: MonitorSettings, trainer: ServiceClient, inference: ServiceClient) -> None:
        self.settings = settings
        self.trainer = trainer
        self.inference = inference

    def timeline_dir(self) -> Path:
        path = self.settings.service_dir("monitor") / "rollouts"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _last(self) -> tuple[bool, dict[str, Any]] | None:
        """(active, the last rollout) from the trainer; None when there is none or it does not answer."""
        try:
            view = self.trainer.get("/rollout")
        except GradeflowError:
            return None
        r = view.get("rollout") if isinstance(view, dict) else None
        return (bool(view.get("active")), r) if isinstance(r, dict) else None

    def in_progress(self) -> str | None:
        """A sentence naming the rollout in progress, or None (also when the trainer does not answer)."""
        last = self._last()
        if last is None or not last[0]:
            return None
        r = last[1]
        return f"rollout of v{r.get('candidate_version')} in {r.get('stage')} in progress: its decision comes first"

    def withdrawn(self, version: int) -> bool:
        """True when ``version``'s rollout (the last one) ended without a promotion."""
        last = self._last()
        return (
            last is not None
            and last[1].get("candidate_version") == version
            and last[1].get("decision") in ("rolled_back", "aborted", "expired")
        )

    def _labelled_since(self, since: str) -> list[LoggedPrediction]:
        out: list[LoggedPrediction] = []
        cursor: int | None = None
        while len(out) < MAX_ROWS:
            params: dict[str, Any] = {"labelled": "true", "since": since, "limit": self.settings.page_size}
            if cursor is not None:
                params["since_id"] = cursor
            page = PredictionPage.model_validate(self.inference.get("/predictions", params=params))
            out.extend(page.items)
            if (
                not page.items
                or page.next_since_id is None
                or (cursor is not None and page.next_since_id <= cursor)
            ):
                break
            cursor = page.next_since_id
        return out

    def evaluate(self) -> dict[str, Any] | None:
        """One evaluation; returns what it recorded (None: no rollout in progress)."""
        s = self.settings
        view = self.trainer.get("/rollout")
        r = view.get("rollout") if isinstance(view, dict) and view.get("active") else None
        if not isinstance(r, dict) or not ROLLOUT_ID.fullmatch(str(r.get("rollout_id", ""))):
            return None
        rows = self._labelled_since(str(r["stage_started_at"]))
        d, summary = differences(rows, r)
        verdict = sequential.decide(
            d, alpha=s.rollout_alpha, margin=s.rollout_margin, min_pairs=s.rollout_min_pairs
        )
        served = self.inference.get("/rollout")
        same = isinstance(served, dict) and (served.get("rollout") or {}).get("rollout_id") == r["rollout_id"]
        arms = served.get("arms", {}) if same else {}
        abort = guard(arms, s) if same else None
        action: str = "abort" if abort else verdict.action
        if action == "promote" and r["stage"] == "shadow" and "canary" in r.get("stages", []):
            action = "canary"
        evidence = {
            "at": datetime.now(UTC).isoformat(),
            "stage": r["stage"],
            "test": "normal-mixture confidence sequence on paired |error| differences",
            "alpha": s.rollout_alpha,
            "margin": s.rollout_margin,
            **verdict.as_dict(),
            **summary,
            "arms": arms,
            "decision": action,
            "reason": abort or verdict.reason,
        }
        with open(self.timeline_dir() / f"{r['rollout_id']}.jsonl", "a") as fh:
            fh.write(
                json.dumps(
                    {
                        **evidence,
                        "candidate_version": r["candidate_version"],
                        "champion_version": r["champion_version"],
                    },
                    default=str,
                )
                + "\n"
            )
        self._act(r, action, evidence)
        return evidence

    def _act(self, r: dict[str, Any], action: str, evidence: dict[str, Any]) -> None:
        rid, why = r["rollout_id"], str(evidence["reason"])[:450]
        # the evidence first, so that GET /rollout shows what the decision was taken on
        self.trainer.post("/rollout/evidence", json={"rollout_id": rid, "evidence": evidence})
        if action == "abort":
            self.trainer.post("/rollout/abort", json={"decision": "aborted", "reason": f"monitor: {why}"})
        elif action == "rollback":
            self.trainer.post("/rollout/abort", json={"decision": "rolled_back", "reason": f"monitor: {why}"})
        elif action == "canary":
            self.trainer.post(
                "/rollout/stage", json={"stage": "canary", "reason": f"monitor: shadow passed: {why}"}
            )
        elif action == "promote":
            self.trainer.post("/rollout/promote", json={"reason": f"monitor: {why}"})
        else:
            return
        logger.warning("rollout %s: %s (%s)", rid, action, why)

    def check(self) -> None:
        """The scheduler's job: never raises."""
        try:
            self.evaluate()
        except Exception:  # noqa: BLE001 - the scheduler must keep running
            logger.exception("rollout evaluation failed")
