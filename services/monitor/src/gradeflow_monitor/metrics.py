"""Prometheus metrics of the monitor (one registry per Monitor, so tests can build several apps)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

if TYPE_CHECKING:
    from .storage import Run


class MonitorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.checks_total = Counter(
            "gradeflow_monitor_checks", "Checks run, by status", ["status"], registry=r
        )
        self.checks_total.labels(status="ok")
        self.drift_share = Gauge(
            "gradeflow_monitor_drift_share", "Share of drifted feature columns (last check)", registry=r
        )
        self.dataset_drift = Gauge(
            "gradeflow_monitor_dataset_drift", "1 if the last check found dataset drift", registry=r
        )
        self.column_score = Gauge(
            "gradeflow_monitor_column_drift_score",
            "Drift score per column (last check)",
            ["column", "method"],
            registry=r,
        )
        self.column_threshold = Gauge(
            "gradeflow_monitor_column_drift_threshold",
            "Drift threshold per column (last check)",
            ["column", "method"],
            registry=r,
        )
        self.window_rows = Gauge("gradeflow_monitor_window_rows", "Rows in the last window", registry=r)
        self.window_mae = Gauge(
            "gradeflow_monitor_window_mae", "MAE on the labelled rows of the last window", registry=r
        )
        self.window_rmse = Gauge(
            "gradeflow_monitor_window_rmse", "RMSE on the labelled rows of the last window", registry=r
        )
        self.degraded = Gauge(
            "gradeflow_monitor_degraded", "1 if the last check found degradation", registry=r
        )
        self.verdicts = Counter(
            "gradeflow_monitor_verdicts",
            "Checks that found dataset drift (verdict=drift) or degradation on labelled rows "
            "(verdict=degraded); increase() over a window catches a verdict that a later check cleared",
            ["verdict"],
            registry=r,
        )
        for verdict in ("drift", "degraded"):
            self.verdicts.labels(verdict=verdict)
        self.retrains_triggered = Counter(
            "gradeflow_monitor_retrains_triggered", "Retrains triggered", registry=r
        )
        self.retrains_failed = Counter(
            "gradeflow_monitor_retrains_failed",
            "Retrain calls that failed (trainer unreachable or error)",
            registry=r,
        )
        self.retrains_skipped = Counter(
            "gradeflow_monitor_retrains_skipped", "Retrains skipped by a guard", ["reason"], registry=r
        )
        self.last_check = Gauge(
            "gradeflow_monitor_last_check_timestamp_seconds", "End of the last check", registry=r
        )

    def observe(self, run: Run) -> None:
        self.checks_total.labels(status=run.status).inc()
        if run.finished_at is not None:
            self.last_check.set(run.finished_at.timestamp())
        self.window_rows.set(run.rows)
        if run.status == "error":
            return
        if run.drift_share is not None:
            self.drift_share.set(run.drift_share)
        self.dataset_drift.set(1 if run.dataset_drift else 0)
        self.degraded.set(1 if run.degraded else 0)
        if run.dataset_drift:
            self.verdicts.labels(verdict="drift").inc()
        if run.degraded:
            self.verdicts.labels(verdict="degraded").inc()
        if run.mae is not None:
            self.window_mae.set(run.mae)
        if run.rmse is not None:
            self.window_rmse.set(run.rmse)
        self.column_score.clear()
        self.column_threshold.clear()
        for c in run.columns:
            self.column_score.labels(column=c.column, method=c.method).set(c.score)
            self.column_threshold.labels(column=c.column, method=c.method).set(c.threshold)
        if run.action in ("retrain_skipped", "alert_only") and run.action_code:
            self.retrains_skipped.labels(reason=run.action_code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
