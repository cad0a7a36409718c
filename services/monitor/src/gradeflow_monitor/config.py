"""Settings of the monitor (environment variables, read once by ``get_settings()``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field

from gradeflow_shared.settings import AdminTokenSettings, BaseServiceSettings, InferenceUrlSettings


class MonitorSettings(BaseServiceSettings, AdminTokenSettings, InferenceUrlSettings):
    """Every variable the monitor reads, with its default (no prefix: ``MONITOR_PORT`` etc.)."""

    monitor_port: int = Field(default=8002, description="Port of the monitor's HTTP API (MONITOR_PORT).")
    trainer_url: str = Field(
        default="http://127.0.0.1:8001", description="Trainer service, asked to retrain (TRAINER_URL)."
    )
    trainer_public_url: str = Field(
        default="",
        description="The trainer's base URL as a person's browser reaches it, for the job links in the reports "
        "(TRAINER_PUBLIC_URL); empty = TRAINER_URL.",
    )
    monitor_db_url: str = Field(
        default="",
        description="SQLAlchemy URL of the run history (MONITOR_DB_URL); default sqlite:///DATA_DIR/monitor/monitor.db.",
    )
    check_interval_seconds: float = Field(
        default=300.0, gt=0, description="Seconds between scheduled checks (CHECK_INTERVAL_SECONDS)."
    )
    scheduler_enabled: bool = Field(
        default=True,
        description="Run the interval job at all (SCHEDULER_ENABLED); POST /checks always works.",
    )
    window_size: int = Field(
        default=5000,
        ge=1,
        description="The current window is the newest WINDOW_SIZE logged predictions of the serving model "
        "version (WINDOW_SIZE).",
    )
    min_window_rows: int = Field(
        default=100,
        ge=1,
        description="Below this many rows in the window no drift verdict is given and nothing is triggered "
        "(MIN_WINDOW_ROWS).",
    )
    min_labelled_rows: int = Field(
        default=50,
        ge=0,
        description="Labelled rows needed for a performance verdict, and new labelled rows (feedback received "
        "since the last retrain) needed before another retrain (MIN_LABELLED_ROWS).",
    )
    min_recent_reference_rows: int = Field(
        default=50,
        ge=1,
        description="When the serving model was promoted on recent labelled rows (its export carries them, "
        "reference_recent.csv) and there are at least this many, the window is compared with them instead of "
        "the training sample (MIN_RECENT_REFERENCE_ROWS).",
    )
    degradation_ratio: float = Field(
        default=1.3,
        gt=0,
        description="Degraded when window MAE > DEGRADATION_RATIO x the model's performance baseline MAE "
        "(the manifest's performance_baseline: its error on the recent labelled holdout that promoted it, "
        "else its base test MAE) (DEGRADATION_RATIO).",
    )
    retrain_cooldown_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="Minimum seconds between two retrain triggers (RETRAIN_COOLDOWN_SECONDS).",
    )
    drift_share_threshold: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Dataset drift when the share of drifted feature columns >= this (DRIFT_SHARE_THRESHOLD); "
        "0.1 = 2 of the 14 synthetic features.",
    )
    drift_alpha: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="Per-column false-alarm rate used to calibrate the noise part of each threshold (DRIFT_ALPHA).",
    )
    num_drift_floor: float = Field(
        default=0.1, gt=0, description="Smallest normed Wasserstein distance called drift (NUM_DRIFT_FLOOR)."
    )
    cat_drift_floor: float = Field(
        default=0.1, gt=0, description="Smallest Jensen-Shannon distance called drift (CAT_DRIFT_FLOOR)."
    )
    auto_retrain: bool = Field(
        default=True, description="Call the trainer on drift/degradation (AUTO_RETRAIN); false = report only."
    )
    report_keep: int = Field(
        default=50,
        ge=1,
        description="Keep the HTML report files of the newest REPORT_KEEP runs (REPORT_KEEP).",
    )
    page_size: int = Field(default=1000, ge=1, description="Rows per GET /predictions page (PAGE_SIZE).")
    http_retries: int = Field(default=3, ge=0, description="Retries of a failed call to another service.")
    http_backoff_seconds: float = Field(
        default=0.5, ge=0, description="First retry delay (doubles each retry)."
    )
    retrain_failure_backoff_seconds: float = Field(
        default=60.0,
        ge=0,
        description="After the trainer could not be reached, wait this long (doubling per failure, capped by the "
        "cooldown) before trying again (RETRAIN_FAILURE_BACKOFF_SECONDS).",
    )
    rollout_alpha: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="Error rate of the rollout's sequential test (ROLLOUT_ALPHA): a challenger worse by "
        "ROLLOUT_MARGIN or more is promoted, or one at least as good rolled back, with probability at most "
        "ROLLOUT_ALPHA / 2 each (see README, progressive delivery).",
    )
    rollout_margin: float = Field(
        default=0.25,
        ge=0,
        description="Loss of accuracy tolerated for a promotion, in target units of MAE (ROLLOUT_MARGIN).",
    )
    rollout_min_pairs: int = Field(
        default=30,
        ge=2,
        description="Labelled comparisons needed before the rollout's test may decide (ROLLOUT_MIN_PAIRS).",
    )
    rollout_interval_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between two evaluations of a rollout in progress (ROLLOUT_INTERVAL_SECONDS).",
    )
    rollout_max_error_rate_increase: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Abort the rollout when the challenger's error rate (records it could not predict) exceeds "
        "the champion's by more than this (ROLLOUT_MAX_ERROR_RATE_INCREASE), after ROLLOUT_MIN_REQUESTS records.",
    )
    rollout_p99_ratio: float = Field(
        default=3.0,
        gt=1,
        description="Abort the rollout when the challenger's p99 prediction latency exceeds this many times the "
        "champion's and by ROLLOUT_P99_MIN_MS at least (ROLLOUT_P99_RATIO).",
    )
    rollout_p99_min_ms: float = Field(
        default=20.0, ge=0, description="See ROLLOUT_P99_RATIO: the absolute part of the p99 rule (ms)."
    )
    rollout_min_requests: int = Field(
        default=200, ge=1, description="Records per arm before the error-rate and p99 rules apply."
    )

    def db_url(self) -> str:
        return self.monitor_db_url or f"sqlite:///{self.service_dir('monitor') / 'monitor.db'}"

    def reports_dir(self) -> Path:
        path = self.service_dir("monitor") / "reports"
        path.mkdir(parents=True, exist_ok=True)
        return path


@lru_cache
def get_settings() -> MonitorSettings:
    return MonitorSettings()
