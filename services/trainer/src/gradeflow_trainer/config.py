"""Settings of the trainer service (environment variables, read once by ``get_settings()``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field

from gradeflow_shared.settings import (
    AdminTokenSettings,
    BaseServiceSettings,
    FeatureStoreSettings,
    InferenceUrlSettings,
)


class TrainerSettings(BaseServiceSettings, AdminTokenSettings, InferenceUrlSettings, FeatureStoreSettings):
    """Every variable the trainer reads (no prefix)."""

    trainer_port: int = Field(default=8001, description="Port of the trainer's HTTP API (TRAINER_PORT).")
    mlflow_tracking_uri: str = Field(
        default="http://127.0.0.1:5000",
        description="URL of the MLflow tracking server and registry (MLFLOW_TRACKING_URI); the trainer "
        "talks to it over HTTP only.",
    )
    mlflow_ui_url: str = Field(
        default="",
        description="Public URL of the MLflow UI used in links (MLFLOW_UI_URL); default MLFLOW_TRACKING_URI.",
    )
    experiment_name: str = Field(
        default="gradeflow-student-grade",
        description="MLflow experiment of the training runs (EXPERIMENT_NAME).",
    )
    dataset: str = Field(
        default="synthetic",
        description="Base training data (DATASET): 'synthetic', a builtin name (uci-por, uci-mat, spf, sp) or "
        "the path of a JSON dataset spec.",
    )
    feature_source: Literal["dataset", "feast"] = Field(
        default="dataset",
        description="Where training rows come from (FEATURE_SOURCE): 'dataset' reads DATASET as flat rows; "
        "'feast' seeds DATASET into the feature store once (the synthetic data as a term of dated readings) "
        "and builds each training row from the features known at its label time (point-in-time join).",
    )
    dataset_root: str = Field(
        default="",
        description="Folder holding dataset CSVs (DATASET_ROOT): a builtin's file found there is used, "
        "else the copy shipped with GradeFlow (uci-por, uci-mat); spf and sp are not shipped and need it. "
        "Also tried for a JSON spec's relative path after the spec's own folder.",
    )
    model_name: str = Field(default="student-grade", description="Registered model name (MODEL_NAME).")
    promotion_min_improvement: float = Field(
        default=0.01,
        ge=0.0,
        lt=1.0,
        description="Relative RMSE improvement a challenger needs over the champion (or, for a first model, "
        "over the naive baseline) on the same evaluation data (PROMOTION_MIN_IMPROVEMENT; 0.01 = 1%).",
    )
    gate_base_tolerance: float = Field(
        default=0.05,
        ge=0.0,
        description="When labelled production data decides and it is NOT drifted, the challenger may be at "
        "most this much worse (relative RMSE) than the champion on the base holdout (GATE_BASE_TOLERANCE).",
    )
    gate_drift_ratio: float = Field(
        default=0.15,
        ge=0.0,
        description="The labelled production data counts as drifted when the champion's RMSE on it exceeds "
        "its base-holdout RMSE by more than this ratio (GATE_DRIFT_RATIO); then the base holdout no longer "
        "blocks a promotion.",
    )
    gate_min_rows: int = Field(
        default=30,
        ge=2,
        description="Fewest recent labelled production rows (the held-out ones) on which the gate compares "
        "challenger and champion row by row (GATE_MIN_ROWS); with fewer it keeps the champion and says how "
        "many more labelled rows it needs. Retrains without production data are judged on the base holdout.",
    )
    gate_confidence: float = Field(
        default=0.95,
        gt=0.5,
        lt=1.0,
        description="Confidence of the gate's paired bootstrap interval of the per-row error difference on "
        "the recent labelled rows (GATE_CONFIDENCE); a challenger is promoted only when the whole interval "
        "shows it better.",
    )
    export_keep: int = Field(
        default=5, ge=1, description="Exported versions kept on MODEL_DIR (EXPORT_KEEP)."
    )
    reference_rows: int = Field(
        default=2000,
        ge=50,
        description="Rows of the reference sample written with an export (REFERENCE_ROWS).",
    )
    train_on_start: bool = Field(
        default=True,
        description="At start-up, when the registry has no champion, start a first training job "
        "(TRAIN_ON_START).",
    )
    reconcile_interval: float = Field(
        default=30.0,
        ge=0.0,
        le=86_400.0,
        description="Seconds between checks that MODEL_DIR/current and champion.json still match the "
        "registry's champion alias (RECONCILE_INTERVAL; 0 = only at start). The registry can change "
        "under a running trainer: MLflow restarted on another store, a backup restored, the alias moved "
        "in the UI.",
    )
    train_search: bool = Field(
        default=True,
        description="Run the hyper-parameter / model-family search (TRAIN_SEARCH); false fits the default "
        "model only (fast, used by tests).",
    )
    train_search_budget_seconds: float = Field(
        default=30.0,
        ge=0.0,
        description="Time budget of the model search in seconds (TRAIN_SEARCH_BUDGET_SECONDS): the first, "
        "preferred candidate is always scored; a further one starts only while the time spent plus the "
        "mean time per candidate so far fits in it; the best so far wins. The run records the candidates "
        "tried and whether the budget stopped the search. 0 = the first candidate only; the refit on all "
        "rows comes on top. Keeps a retrain on a 2-core machine within the time-to-heal targets "
        "(README, Time to heal).",
    )
    test_size: float = Field(
        default=0.2, gt=0.0, lt=0.9, description="Holdout share of the base data (TEST_SIZE)."
    )
    seed: int = Field(default=0, description="Random seed of split, search and model (SEED).")
    production_min_rows: int = Field(
        default=20,
        ge=2,
        description="Fewest labelled production rows worth using (PRODUCTION_MIN_ROWS); below it retraining "
        "uses the base data only. 20: on uci-mat school GP -> MS, 23 labelled rows cut the held-out MAE "
        "from 3.52 to 3.10 (results/loop_benchmark.md).",
    )
    production_max_rows: int = Field(
        default=50_000, ge=1, description="Most recent labelled production rows pulled (PRODUCTION_MAX_ROWS)."
    )
    production_holdout: float = Field(
        default=0.3,
        gt=0.0,
        lt=1.0,
        description="Share of the labelled production rows (the most recent ones) held out to judge "
        "challenger and champion on the current distribution (PRODUCTION_HOLDOUT).",
    )
    production_weight: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Sample weight of each labelled production training row, so the recent distribution "
        "counts more than the base data (PRODUCTION_WEIGHT); 0 = automatic: the weight that makes the "
        "production rows weigh as much as the base training rows (at most 10).",
    )

    train_mix: bool = Field(
        default=True,
        description="Choose the training mix (production weight 1/3/10/balanced, base rows only, production rows only, or "
        "boosting on the base model's residual) by validation on time-ordered folds of the older labelled "
        "production rows (TRAIN_MIX); false uses the fixed PRODUCTION_WEIGHT rule.",
    )
    mix_min_rows: int = Field(
        default=30,
        ge=4,
        description="Fewest labelled production training rows (after the gate's holdout) for choosing the "
        "training mix by validation (MIX_MIN_ROWS); below it the fixed PRODUCTION_WEIGHT rule is used.",
    )

    refit_on_all_rows: bool = Field(
        default=True,
        description="Validate, then refit (REFIT_ON_ALL_ROWS): after the candidate is evaluated on the holdouts "
        "(what the gate judges and the run reports), refit the same mix, model family and hyper-parameters (no "
        "new search) on the training rows plus the gate's recent labelled holdout, and register, export and "
        "serve that refit. The base holdout joins it only with REFIT_ON_BASE_HOLDOUT. false registers the model "
        "fitted on the training rows only.",
    )
    refit_on_base_holdout: bool = Field(
        default=True,
        description="The refit of REFIT_ON_ALL_ROWS also takes the base holdout (REFIT_ON_BASE_HOLDOUT), so the "
        "served model has seen every labelled row. The base holdout is the same rows in every retrain, so a "
        "later gate never evaluates such a champion there: it uses the champion's base-holdout error recorded "
        "before its refit (version tag gradeflow.base_holdout), and none when the holdout's rows changed "
        "(another dataset, TEST_SIZE or SEED). false keeps the base holdout out of every fit.",
    )

    def effective_production_weight(self, base_rows: int, production_rows: int) -> int:
        """PRODUCTION_WEIGHT, or the automatic weight when it is 0."""
        if self.production_weight:
            return self.production_weight
        if production_rows <= 0:
            return 1
        return max(1, min(10, round(base_rows / production_rows)))

    rollout: Literal["direct", "shadow", "canary", "shadow+canary"] = Field(
        default="direct",
        description="How a challenger the gate approves reaches traffic (ROLLOUT): 'direct' makes it the "
        "champion at once; 'shadow', 'canary' or 'shadow+canary' first publish it as MODEL_DIR/candidate next "
        "to the champion and let the monitor decide on live labels (promote, roll back) stage by stage.",
    )
    rollout_shadow_share: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Share of requests the challenger also predicts, off the request path, in the shadow "
        "stage (ROLLOUT_SHADOW_SHARE).",
    )
    rollout_canary_share: float = Field(
        default=0.1,
        gt=0.0,
        lt=1.0,
        description="Share of keys (student_id, else the X-Rollout-Key header, else the request id) the "
        "challenger answers in the canary stage (ROLLOUT_CANARY_SHARE); sticky per key.",
    )
    rollout_max_age_seconds: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="A rollout not decided after this many seconds (too few labels) expires: the champion "
        "stays, the challenger is withdrawn, the decision is recorded (ROLLOUT_MAX_AGE_SECONDS; checked every "
        "RECONCILE_INTERVAL seconds).",
    )
    trainer_fault_point: str = Field(
        default="",
        description="Crash-test hook, off when empty (TRAINER_FAULT_POINT): '<op>:<step>' (op train, promote "
        "or rollback; step intent, decided (train only), staged, alias, event, current or marker) makes the trainer "
        "SIGKILL itself right after that step of a champion change; 'rollout_start:<step>' (decided, staged, "
        "candidate, state, event) and 'rollout_end:<step>' (state, candidate) the same for a rollout. Never "
        "set it in production.",
    )
    mlflow_wait: float = Field(
        default=120.0, gt=0, description="Seconds to wait for the MLflow server at start-up (MLFLOW_WAIT)."
    )
    mlflow_http_timeout: int = Field(
        default=10,
        ge=1,
        le=600,
        description="Seconds one HTTP request to the MLflow server may take (MLFLOW_HTTP_TIMEOUT); set as "
        "MLflow's MLFLOW_HTTP_REQUEST_TIMEOUT.",
    )
    mlflow_http_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries of a failed HTTP request to the MLflow server (MLFLOW_HTTP_RETRIES); set as "
        "MLflow's MLFLOW_HTTP_REQUEST_MAX_RETRIES (MLflow's own default, 7, makes an outage take minutes "
        "to fail a job).",
    )
    mlflow_http_backoff: int = Field(
        default=1,
        ge=0,
        le=10,
        description="Backoff factor between those retries, whole seconds: waits of 0, 2x, 4x... plus up to "
        "1 s of jitter (MLFLOW_HTTP_BACKOFF); set as MLflow's MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR (an "
        "integer for MLflow).",
    )

    @property
    def ui_url(self) -> str:
        return (self.mlflow_ui_url or self.mlflow_tracking_uri).rstrip("/")


@lru_cache
def get_settings() -> TrainerSettings:
    return TrainerSettings()
