"""Settings base shared by every service.

Configuration comes only from the environment (and an optional ``.env`` file), is read once
into a settings object (``get_settings()`` in each service is cached) and is never read at
import time. Every variable is declared once, with its type and default, in a settings class;
``README.md`` lists them all.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError

PLACEHOLDER_TOKENS = {"", "change-me", "changeme", "dev-token", "secret", "password", "token", "admin"}
MIN_SECRET_LENGTH = 16


class BaseServiceSettings(BaseSettings):
    """Variables every service understands."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="Root of the local data folder (DATA_DIR).")
    model_dir: Path | None = Field(
        default=None, description="Shared model export volume (MODEL_DIR); default DATA_DIR/models."
    )
    log_level: str = Field(default="INFO", description="Python log level (LOG_LEVEL).")
    log_json: bool = Field(default=False, description="Log one JSON object per line (LOG_JSON).")
    environment: str = Field(default="development", description="development | production (ENVIRONMENT).")
    host: str = Field(default="127.0.0.1", description="Bind address of the service (HOST).")

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def models_path(self) -> Path:
        return (self.model_dir or (self.data_dir / "models")).expanduser().resolve()

    def service_dir(self, name: str) -> Path:
        """The service's own folder inside DATA_DIR (created on demand)."""
        path = self.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


class AdminTokenSettings(BaseSettings):
    """``ADMIN_TOKEN``, declared once: the services that check it or send it inherit this class."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    admin_token: str = Field(
        default="",
        description="Bearer token of the admin role (ADMIN_TOKEN): the trainer's /retrain, /promote, "
        "/rollback; inference accepts it for /feedback too; the monitor sends it to /retrain. At least "
        f"{MIN_SECRET_LENGTH} characters, no placeholder: a service refuses to start otherwise.",
    )


class InferenceUrlSettings(BaseSettings):
    """``INFERENCE_URL``, declared once for the services that call inference."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    inference_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Base URL of the inference service (INFERENCE_URL): the monitor reads the prediction "
        "log from its GET /predictions, the trainer pulls labelled production rows from it. Empty: not "
        "called (the trainer trains on the base data only).",
    )


def secret_problem(value: str) -> str | None:
    """Why ``value`` is not a usable secret (placeholder, too short), or None when it is."""
    if value.strip().lower() in PLACEHOLDER_TOKENS:
        return "is empty or a placeholder" if value.strip() else "is empty"
    if len(value) < MIN_SECRET_LENGTH:
        return f"is shorter than {MIN_SECRET_LENGTH} characters"
    return None


def require_secret(name: str, value: str) -> None:
    """Refuse a placeholder or short secret in every environment (raise ConfigError naming the variable)."""
    problem = secret_problem(value)
    if problem is not None:
        raise ConfigError(
            f"{name} {problem}: set it to a random secret (for example `python3 -c "
            f"'import secrets; print(secrets.token_urlsafe(32))'`); `make up` creates one in data/secrets.env"
        )


def bearer_matches(authorization: str | None, *tokens: str) -> bool:
    """True when ``Authorization: Bearer <t>`` carries one of ``tokens`` (constant-time; empty never matches)."""
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    ok = False
    for t in tokens:
        if t:
            ok |= hmac.compare_digest(given.strip().encode(), t.encode())
    return ok


class FeatureStoreSettings(BaseSettings):
    """Where the feature store keeps its data, declared once for the services that use it.

    The defaults need nothing running: parquet files for history and an SQLite file for the latest
    values, both under ``FEATURE_STORE_DIR``. A PostgreSQL URL moves the history (and the registry of
    definitions) into PostgreSQL; a Redis URL moves the latest values into Redis.
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    feature_store_dir: Path | None = Field(
        default=None,
        description="Folder of the feature store's files (FEATURE_STORE_DIR): the registry of feature "
        "definitions, the parquet history and the SQLite online store; default DATA_DIR/feature_store.",
    )
    feature_project: str = Field(
        default="gradeflow",
        pattern=r"^[a-z][a-z0-9_]{0,39}$",
        description="Feast project name (FEATURE_PROJECT): separates the definitions and data of two "
        "platforms that share one PostgreSQL or Redis.",
    )
    feature_offline_store_url: str = Field(
        default="",
        description="PostgreSQL URL of the offline store (FEATURE_OFFLINE_STORE_URL, e.g. "
        "postgresql://user:password@host:5432/db?sslmode=disable): the dated feature history used "
        "for training and the registry of definitions live there. Empty: parquet files in FEATURE_STORE_DIR.",
    )
    feature_online_store_url: str = Field(
        default="",
        description="Redis URL of the online store (FEATURE_ONLINE_STORE_URL, e.g. redis://host:6379/0): "
        "the latest feature values per student, read when predicting by id. Empty: an SQLite file in "
        "FEATURE_STORE_DIR.",
    )

    @property
    def feature_store_path(self) -> Path:
        """FEATURE_STORE_DIR, default DATA_DIR/feature_store, absolute (not created).

        The one rule every service applies (the trainer joins training rows from this folder, inference
        serves and ingests there, the ``gradeflow-features`` jobs write there): in containers they all
        mount the same volume at the same place. Classes without DATA_DIR resolve against ``data``.
        """
        data_dir = Path(getattr(self, "data_dir", None) or "data")
        return (self.feature_store_dir or data_dir / "feature_store").expanduser().resolve()
