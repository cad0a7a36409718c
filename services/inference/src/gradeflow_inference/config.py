"""Settings of the inference service (environment variables, read once by ``get_settings()``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from gradeflow_shared.settings import (
    AdminTokenSettings,
    BaseServiceSettings,
    FeatureStoreSettings,
    require_secret,
)


class InferenceSettings(BaseServiceSettings, AdminTokenSettings, FeatureStoreSettings):
    """Every variable the inference service reads (no prefix; see services/inference/README.md)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    inference_port: int = Field(default=8000, description="Port of the HTTP API (INFERENCE_PORT).")
    labeller_token: str = Field(
        default="",
        description="Bearer token of the labeller role (LABELLER_TOKEN): it may POST /feedback (labels), "
        "nothing else. Empty: the role is off and only ADMIN_TOKEN labels. When set: at least 16 "
        "characters, no placeholder, or the service refuses to start.",
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest request body in bytes (MAX_BODY_BYTES), checked from Content-Length and while "
        "the body streams in: 413 before any parsing. The default holds 10,000 records of the widest "
        "builtin schema.",
    )
    max_string_length: int = Field(
        default=200,
        ge=1,
        description="Longest string value of a categorical feature (MAX_STRING_LENGTH): longer -> 422 "
        "naming the field.",
    )
    inference_workers: int = Field(
        default=1,
        ge=1,
        description="uvicorn worker processes (INFERENCE_WORKERS). Each worker loads its own copy of the "
        "model, runs its own reload watcher and its own log writer.",
    )
    inference_threads: int = Field(
        default=1,
        ge=1,
        description="Threads that run batches of more than 16 records (INFERENCE_THREADS); smaller batches "
        "run inline on the event loop. One is the recommended setting (no GIL contention, steady p99).",
    )
    prediction_db_url: str = Field(
        default="",
        description="SQLAlchemy URL of the prediction log (PREDICTION_DB_URL); "
        "default sqlite:///DATA_DIR/inference/predictions.db (WAL mode). Any SQLAlchemy URL works, "
        "e.g. postgresql+psycopg2://user@host/db.",
    )
    reload_interval: float = Field(
        default=0.2,
        gt=0,
        description="Seconds between checks of MODEL_DIR/current (RELOAD_INTERVAL); a check is a few stat "
        "calls while nothing changed.",
    )
    inference_log_enabled: bool = Field(
        default=True, description="Log every prediction to the database (INFERENCE_LOG_ENABLED)."
    )
    log_batch_size: int = Field(
        default=500, ge=1, description="Rows per insert of the log writer thread (LOG_BATCH_SIZE)."
    )
    log_queue_max: int = Field(
        default=100_000,
        ge=1,
        description="Bound of the in-memory log queue in rows (LOG_QUEUE_MAX); rows beyond it are dropped "
        "and counted (metric inference_log_dropped_total, GET /health, GET /model, a warning log line).",
    )
    log_flush_interval: float = Field(
        default=0.2,
        gt=0,
        description="Max seconds a logged row waits before it is written (LOG_FLUSH_INTERVAL).",
    )
    log_shutdown_timeout: float = Field(
        default=30.0,
        ge=0,
        description="On shutdown, seconds to keep trying to write queued rows before counting them dropped "
        "(LOG_SHUTDOWN_TIMEOUT).",
    )
    log_durable_ack: bool = Field(
        default=False,
        description="Answer a prediction only once its log row is on the data volume (LOG_DURABLE_ACK): in an "
        "append-only journal, one write per event-loop turn shared by the requests of that turn; the writer "
        "thread moves the rows into the database and a restart replays the journal of a killed process, so a "
        "kill loses no answered prediction (a machine crash may: no fsync). "
        "Off: answered once queued; a hard kill loses the rows of the last LOG_FLUSH_INTERVAL, counted on the "
        "next start (inference_log_lost_on_crash_total).",
    )
    max_batch_records: int = Field(
        default=10_000,
        ge=1,
        le=10_000,
        description="Most records accepted in one POST /predict (MAX_BATCH_RECORDS; at most 10,000: the "
        "prediction log derives record ids as batch id * 10,000 + position).",
    )
    verify_tolerance: float = Field(
        default=0.05,
        ge=0,
        description="Max absolute difference allowed between the ONNX and scikit-learn predictions on the "
        "reference sample when an export is verified (VERIFY_TOLERANCE, in target units).",
    )
    verify_rows: int = Field(
        default=200, ge=1, description="Reference rows used for the load-time test prediction (VERIFY_ROWS)."
    )
    predict_path: str = Field(
        default="auto",
        pattern="^(auto|onnx|sklearn)$",
        description="auto: per batch size, the path measured faster at load time; onnx or sklearn: always "
        "that path (PREDICT_PATH).",
    )
    shadow_queue_max: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Requests waiting for the challenger's shadow prediction (SHADOW_QUEUE_MAX); when full, "
        "a request's shadow is dropped and counted (inference_shadow_dropped_total), never its answer.",
    )

    feature_materialize_interval: float = Field(
        default=300.0,
        ge=0,
        description="Seconds between scheduled materializations of the feature store's history into its "
        "online store (FEATURE_MATERIALIZE_INTERVAL); 0: only on demand (POST /features/materialize). "
        "Accepted readings do not wait for it: they are pushed by their own job (FEATURE_PUSH_INTERVAL).",
    )

    feature_push_interval: float = Field(
        default=0.0,
        ge=0,
        description="Seconds between pushes of accepted readings into the feature store "
        "(FEATURE_PUSH_INTERVAL); 0: each POST /readings batch is pushed at once. A longer interval batches "
        "the pushes of heavy ingestion (and keeps readings out of the online store while fuzzing).",
    )
    feature_cache_students: int = Field(
        default=200_000,
        ge=0,
        description="Students whose online features each inference thread keeps decoded (FEATURE_CACHE_STUDENTS; "
        "SQLite online store only): dropped whenever the store changes, so a cached value is never staler "
        "than the last write. 0: read the store at every request.",
    )

    def db_url(self) -> str:
        if self.prediction_db_url:
            return self.prediction_db_url
        return f"sqlite:///{self.service_dir('inference') / 'predictions.db'}"


def check_secrets(settings: InferenceSettings) -> None:
    """Refuse to start (ConfigError naming the variable) with a placeholder or short token."""
    require_secret("ADMIN_TOKEN", settings.admin_token)
    if settings.labeller_token:
        require_secret("LABELLER_TOKEN", settings.labeller_token)


@lru_cache
def get_settings() -> InferenceSettings:
    return InferenceSettings()
