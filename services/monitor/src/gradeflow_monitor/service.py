"""One check, end to end: window + reference -> drift + performance -> guards -> retrain call -> stored run.

``Monitor`` holds the long-lived pieces (store, HTTP clients, window reader, metrics) and a lock so
that two checks never run at once (the scheduler's job and ``POST /checks`` share it).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from gradeflow_shared.contracts import DriftVerdict, Job, RetrainRequest
from gradeflow_shared.errors import Conflict, GradeflowError
from gradeflow_shared.http import ServiceClient
from gradeflow_shared.manifest import RECENT_LABELLED, Manifest
from gradeflow_shared.settings import require_secret

from . import guards, story
from .config import MonitorSettings
from .drift import DriftPolicy, DriftResult, evaluate_drift
from .metrics import MonitorMetrics
from .performance import PerformanceResult, baseline_of, evaluate_performance
from .rollout import RolloutJudge
from .sources import InferenceWindow, ServingModel, load_serving_model
from .storage import ColumnResult, Run, Store, _aware

logger = logging.getLogger(__name__)

TRAINING_REFERENCE = "training"


class WindowSource(Protocol):
    def fetch(self, model_version: int) -> pd.DataFrame: ...


class Trainer(Protocol):
    """What the monitor needs from the trainer (HTTP in production, a fake in unit tests)."""

    def retrain(self, request: RetrainRequest) -> Job: ...

    def job(self, job_id: str) -> Job: ...


class HttpTrainer:
    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    def retrain(self, request: RetrainRequest) -> Job:
        return Job.model_validate(self.client.post("/retrain", json=request.model_dump(mode="json")))

    def job(self, job_id: str) -> Job:
        return Job.model_validate(self.client.get(f"/jobs/{job_id}"))


def policy_from_settings(s: MonitorSettings) -> DriftPolicy:
    return DriftPolicy(
        num_floor=s.num_drift_floor,
        cat_floor=s.cat_drift_floor,
        alpha=s.drift_alpha,
        min_window_rows=s.min_window_rows,
        drift_share=s.drift_share_threshold,
    )


def feature_lists(manifest: Manifest) -> tuple[list[str], list[str]]:
    nums = [f.name for f in manifest.features if f.kind == "numeric"]
    cats = [f.name for f in manifest.features if f.kind == "categorical"]
    return nums, cats


def known_categories(manifest: Manifest | None) -> dict[str, list[str]] | None:
    """The values seen in training per categorical column (None without a manifest: the reference's)."""
    if manifest is None:
        return None
    return {f.name: f.categories for f in manifest.features if f.kind == "categorical" and f.categories}


def write_report(
    result: DriftResult,
    perf: PerformanceResult | None,
    extra: dict[str, Any],
    html_path: Path | None,
    json_path: Path,
    header: str | None = None,
) -> bool:
    """The Evidently HTML (when a report ran; ``header`` on top of it) and a JSON with the Evidently
    snapshot plus our verdicts (and ``extra``: the story fields). Without an Evidently report and with
    a ``header``, the HTML is the header alone. Returns whether an HTML file was written."""
    body: dict[str, Any] = {
        **extra,
        "drift": result.summary(),
        "performance": perf.as_dict() if perf else None,
    }
    wrote = False
    if result.snapshot is not None:
        body["evidently"] = result.snapshot.dict()
        if html_path is not None:
            result.snapshot.save_html(str(html_path))
            if header:
                html_path.write_text(story.inject_header(html_path.read_text(), header))
            wrote = True
    elif html_path is not None and header:
        html_path.write_text(story.standalone_page(header, f"No drift report: {result.reason}"))
        wrote = True
    json_path.write_text(json.dumps(body, default=str, indent=1))
    return wrote


@dataclass
class CheckInputs:
    """Data of one check given directly (CLI with CSVs, tests) instead of pulled."""

    current: pd.DataFrame
    reference: pd.DataFrame
    num_cols: list[str]
    cat_cols: list[str]
    manifest: Manifest | None = None


class Monitor:
    def __init__(
        self,
        settings: MonitorSettings,
        store: Store,
        window: WindowSource | None = None,
        trainer: Trainer | None = None,
        metrics: MonitorMetrics | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or MonitorMetrics()
        self.clock = clock or (lambda: datetime.now(UTC))
        self._clients: list[ServiceClient] = []
        self.rollout: RolloutJudge | None = None
        inference_client: ServiceClient | None = None
        if window is None:
            c = ServiceClient(
                settings.inference_url,
                retries=settings.http_retries,
                backoff=settings.http_backoff_seconds,
                timeout=30.0,
            )
            self._clients.append(c)
            window = InferenceWindow(c, settings.window_size, settings.page_size)
            inference_client = c
        if trainer is None:
            # the token goes to the trainer: a placeholder or short one is refused before any check
            require_secret("ADMIN_TOKEN", settings.admin_token)
            c = ServiceClient(
                settings.trainer_url,
                token=settings.admin_token,
                retries=settings.http_retries,
                backoff=settings.http_backoff_seconds,
            )
            self._clients.append(c)
            trainer = HttpTrainer(c)
            if inference_client is not None:  # both services over HTTP: the rollout can be judged
                self.rollout = RolloutJudge(settings, c, inference_client)
        self.window = window
        self.trainer = trainer
        self.policy = policy_from_settings(settings)
        self._lock = threading.Lock()

    def close(self) -> None:
        for c in self._clients:
            c.close()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    # ------------------------------------------------------------------ the check
    def run_check(
        self, trigger: str = "schedule", inputs: CheckInputs | None = None, html_out: Path | None = None
    ) -> Run:
        """Run one check now (raises Conflict if one is already running)."""
        if not self._lock.acquire(blocking=False):
            raise Conflict("a check is already running", {"busy": True})
        try:
            return self._check(trigger, inputs, html_out)
        finally:
            self._lock.release()

    def scheduled_check(self) -> None:
        """The APScheduler job: never raises (a failed check is stored as an error run)."""
        try:
            self.run_check("schedule")
        except Conflict:
            logger.info("scheduled check skipped: a check is already running")
        except Exception:  # noqa: BLE001 - the scheduler must keep running; the error is logged and stored
            logger.exception("scheduled check failed")

    def _check(self, trigger: str, inputs: CheckInputs | None, html_out: Path | None) -> Run:
        s = self.settings
        run = self.store.add(
            Run(started_at=self.clock(), trigger=trigger, policy_json=json.dumps(asdict(self.policy)))
        )
        try:
            if inputs is None:
                serving: ServingModel = load_serving_model(s.models_path)
                manifest: Manifest | None = serving.manifest
                nums, cats = feature_lists(serving.manifest)
                window = self.window.fetch(serving.manifest.version)
                reference, run.reference_set = serving.reference, TRAINING_REFERENCE
                baseline = serving.manifest.baseline()
                if (
                    serving.recent_reference is not None
                    and baseline is not None
                    and baseline.evaluation_set == RECENT_LABELLED
                    and len(serving.recent_reference) >= s.min_recent_reference_rows
                ):
                    # the model was promoted on these rows and is judged against its error there: the
                    # traffic is compared with them too, so the shift it was trained for is no drift and
                    # a different one is
                    reference, run.reference_set = serving.recent_reference, RECENT_LABELLED
                run.model_version = serving.manifest.version
            else:
                manifest = inputs.manifest
                nums, cats = inputs.num_cols, inputs.cat_cols
                window, reference = inputs.current, inputs.reference
                run.reference_set = "given"
                run.model_version = manifest.version if manifest else None
            run.rows = len(window)
            if "id" in window and len(window):
                run.window_first_id, run.window_last_id = int(window["id"].min()), int(window["id"].max())
            run.window_first_at, run.window_last_at = _time_range(window)

            drift = evaluate_drift(
                window, reference, nums, cats, self.policy, categories=known_categories(manifest)
            )
            perf = evaluate_performance(
                window,
                manifest.metrics if manifest else {},
                s.degradation_ratio,
                s.min_labelled_rows,
                baseline=baseline_of(manifest),
            )
            self._fill_verdicts(run, drift, perf)
            state = self.store.guard_state()
            run.new_labelled_rows = _new_labelled(window, state.last_trigger_at)
            decision = self._decide(run, drift, perf, state)
            if decision.trigger:
                decision = self._trigger(run, decision)
            run.action, run.action_code, run.action_reason = decision.action, decision.code, decision.reason
            run.status = "ok" if drift.verdict else "no_verdict"
            run.finished_at = self.clock()
            self._write_files(run, drift, perf, html_out, manifest, state.last_job_id)
        except GradeflowError as exc:
            logger.warning("check %s failed: %s", run.id, exc.message)
            run.status, run.action, run.error = "error", guards.ERROR, f"{exc.error_code}: {exc.message}"
            run.action_reason = exc.message
        except Exception as exc:
            logger.exception("check %s failed", run.id)
            run.status, run.action, run.error = "error", guards.ERROR, f"{exc.__class__.__name__}: {exc}"
            run.action_reason = run.error
            run.finished_at = self.clock()
            self.store.save(run)
            self.metrics.observe(run)
            raise
        run.finished_at = self.clock()
        saved = self.store.save(run)
        self.metrics.observe(saved)
        self._prune_reports()
        logger.info(
            "check %s: rows=%s drift_share=%s degraded=%s action=%s (%s)",
            saved.id,
            saved.rows,
            saved.drift_share,
            saved.degraded,
            saved.action,
            saved.action_reason,
        )
        return saved

    def _fill_verdicts(self, run: Run, drift: DriftResult, perf: PerformanceResult) -> None:
        run.reference_rows = drift.reference_rows
        run.drift_share = drift.drift_share
        run.drift_share_threshold = drift.drift_share_threshold
        run.dataset_drift = drift.dataset_drift
        run.verdict_reason = drift.reason
        run.columns = [
            ColumnResult(
                column=c.column,
                kind=c.kind,
                method=c.method,
                score=c.score,
                threshold=c.threshold,
                drifted=c.drifted,
                noise_threshold=c.noise_threshold,
                floor=c.floor,
            )
            for c in drift.columns
        ]
        run.labelled_rows = perf.labelled_rows
        run.degraded = perf.degraded
        run.mae, run.rmse, run.test_mae, run.test_rmse = perf.mae, perf.rmse, perf.test_mae, perf.test_rmse
        run.baseline_mae, run.baseline_set = perf.baseline_mae, perf.baseline_set
        run.performance_json = json.dumps(
            {**perf.figures(), "baseline_set": perf.baseline_set, "reason": perf.reason}
        )

    def _decide(
        self, run: Run, drift: DriftResult, perf: PerformanceResult, state: guards.GuardState
    ) -> guards.Decision:
        s = self.settings
        if not drift.verdict and not perf.degraded:
            return guards.Decision(guards.NO_VERDICT, drift.reason)
        if (
            drift.dataset_drift
            and not perf.degraded
            and settled(perf)
            and run.reference_set != RECENT_LABELLED
        ):
            # the serving model was promoted on recent labelled traffic and the window's labels show it
            # performs as it did there: the drift (against the base reference) is the shift it was
            # trained for, not a reason to retrain again
            return guards.Decision(
                guards.NONE,
                f"dataset drift ({len(drift.drifted_columns)}/{len(drift.columns)} columns: "
                f"{', '.join(drift.drifted_columns)}), but the model was validated on recent labelled "
                f"traffic and still performs as there ({perf.reason}): settled, no retrain",
                story.SETTLED,
            )
        if (
            drift.dataset_drift
            and not perf.degraded
            and run.reference_set == RECENT_LABELLED
            and not self._confirms_drift(run)
        ):
            # a shift away from the rows the model was promoted on, with no degradation behind it: each
            # column is tested at its own noise level, so one window in a long quiet stretch can flag a few
            # columns by chance; two checks in a row cannot (the chance multiplies), a real shift stays
            return guards.Decision(
                guards.NONE,
                f"dataset drift against the recent labelled rows the model was promoted on "
                f"({len(drift.drifted_columns)}/{len(drift.columns)} columns: "
                f"{', '.join(drift.drifted_columns)}) without degradation ({perf.reason}): the next check "
                "must confirm it before a retrain",
                story.UNCONFIRMED,
            )
        why = []
        if drift.dataset_drift:
            why.append(
                f"dataset drift: {len(drift.drifted_columns)}/{len(drift.columns)} columns "
                f"({drift.drift_share:.2f} >= {drift.drift_share_threshold:g}: "
                f"{', '.join(drift.drifted_columns)})"
            )
        if perf.degraded:
            why.append(f"performance degraded: {perf.reason}")
        job_state, promoted = self._last_job(state) if why else (None, None)
        return guards.decide(
            guards.GuardInput(
                now=self.clock(),
                need=bool(why),
                why="; ".join(why),
                auto_retrain=s.auto_retrain,
                rows=run.rows,
                min_window_rows=s.min_window_rows,
                new_labelled_rows=run.new_labelled_rows,
                min_labelled_rows=s.min_labelled_rows,
                cooldown_seconds=s.retrain_cooldown_seconds,
                job_state=job_state,
                failure_backoff_seconds=s.retrain_failure_backoff_seconds,
                model_version=run.model_version,
                promoted_version=promoted,
            ),
            state,
        )

    def _confirms_drift(self, run: Run) -> bool:
        """The previous check judged the same model against the same recent reference and found dataset
        drift too."""
        prev = self.store.latest()
        return (
            prev is not None
            and prev.id != run.id
            and prev.status != "error"
            and prev.model_version == run.model_version
            and prev.reference_set == RECENT_LABELLED
            and bool(prev.dataset_drift)
        )

    def _last_job(self, state: guards.GuardState) -> tuple[str | None, int | None]:
        """State of the last retrain job, and the version it promoted (None: none, or not promoted)."""
        if not state.last_job_id:
            return None, None
        try:
            job = self.trainer.job(state.last_job_id)
        except GradeflowError as exc:
            if getattr(exc, "http_status", None) == 404 or exc.status_code == 404:
                return None, None  # the trainer forgot the job (restart): not in flight
            logger.warning("cannot poll retrain job %s: %s", state.last_job_id, exc.message)
            return "unknown", None
        promoted = job.result.version if job.result is not None and job.result.decision.promoted else None
        if promoted is not None and self.rollout is not None and self.rollout.withdrawn(promoted):
            promoted = None  # the gate approved it, but its rollout ended without a promotion
        return job.state, promoted

    def _trigger(self, run: Run, decision: guards.Decision) -> guards.Decision:
        busy = self.rollout.in_progress() if self.rollout is not None else None
        if busy:  # a retrain now would supersede the challenger being judged on live labels
            return guards.Decision(guards.SKIPPED, f"{decision.reason}; {busy}", guards.SKIP_ROLLOUT)
        req = RetrainRequest(
            reason=f"monitor run {run.id}: {decision.reason}"[:2000], monitor_run_id=str(run.id)
        )
        try:
            job = self.trainer.retrain(req)
        except GradeflowError as exc:
            logger.warning("retrain trigger failed: %s", exc.message)
            self.metrics.retrains_failed.inc()
            return guards.Decision(
                guards.FAILED, f"{decision.reason}; trainer call failed: {exc.message}", "trainer_error"
            )
        run.retrain_job_id = job.id
        self.metrics.retrains_triggered.inc()
        note = "" if job.state == "queued" else f" (trainer answered with its {job.state} job)"
        return guards.Decision(guards.TRIGGERED, f"{decision.reason}; retrain job {job.id}{note}")

    # ------------------------------------------------------------------ report files
    def _write_files(
        self,
        run: Run,
        drift: DriftResult,
        perf: PerformanceResult,
        html_out: Path | None,
        manifest: Manifest | None = None,
        last_job_id: str | None = None,
    ) -> None:
        reports = self.settings.reports_dir()
        html = reports / f"run-{run.id:06d}.html"
        js = reports / f"run-{run.id:06d}.json"
        told = story.story(
            run,
            model_run_id=manifest.run_id if manifest else None,
            job_id=last_job_id if run.action == guards.SKIPPED else None,
            trainer_url=self.settings.trainer_public_url or self.settings.trainer_url,
            performance=perf.as_dict(),
        )
        extra = {
            **told,
            "window_first_id": run.window_first_id,
            "window_last_id": run.window_last_id,
            "policy": json.loads(run.policy_json),
        }
        wrote = write_report(drift, perf, extra, html, js, header=story.header_html(told))
        run.report_html = str(html) if wrote else None
        run.report_json = str(js)
        if html_out is not None and drift.snapshot is not None and wrote:
            html_out.write_bytes(html.read_bytes())

    def _prune_reports(self) -> None:
        for run_id, path in self.store.report_paths_beyond(self.settings.report_keep):
            if path:
                Path(path).unlink(missing_ok=True)
            self.store.clear_html(run_id)

    # ------------------------------------------------------------------ views
    def verdict(self, run: Run | None = None) -> DriftVerdict:
        run = run or self.store.latest()
        if run is None:
            return DriftVerdict(run_id=None, action="none", action_reason="no check has run yet")
        perf = {k: v for k, v in run.performance.items() if isinstance(v, int | float)}
        return DriftVerdict(
            run_id=str(run.id),
            at=_aware(run.finished_at or run.started_at),
            model_version=run.model_version,
            rows=run.rows,
            drift_share=run.drift_share,
            dataset_drift=run.dataset_drift,
            degraded=run.degraded,
            drifted_columns=run.drifted_columns,
            performance=perf,
            action=run.action,
            action_reason=run.action_reason or run.verdict_reason,
            report_url=f"/reports/{run.id}"
            if run.report_html
            else (f"/reports/{run.id}.json" if run.report_json else None),
            retrain_job_id=run.retrain_job_id,
        )


def settled(perf: PerformanceResult) -> bool:
    """The serving model's baseline comes from recent labelled traffic and the window's labelled rows
    give a verdict within it: feature drift against the (base) reference alone does not retrain."""
    return perf.baseline_set == RECENT_LABELLED and perf.has_verdict and not perf.degraded


def _time_range(window: pd.DataFrame) -> tuple[datetime | None, datetime | None]:
    """The first and last prediction timestamps of the window (None without a ``ts`` column)."""
    if "ts" not in window or not len(window):
        return None, None
    ts = pd.to_datetime(window["ts"], utc=True, errors="coerce").dropna()
    if not len(ts):
        return None, None
    return ts.min().to_pydatetime(), ts.max().to_pydatetime()


def _new_labelled(window: pd.DataFrame, since: datetime | None) -> int:
    """Labelled rows of the window whose feedback arrived after the last retrain trigger."""
    if "actual" not in window or not len(window):
        return 0
    lab = window[window["actual"].notna()]
    if since is None or "feedback_at" not in lab:
        return int(len(lab))
    at = pd.to_datetime(lab["feedback_at"], utc=True, errors="coerce")
    return int(((at > pd.Timestamp(since)) | at.isna()).sum())
