"""Settings base shared by every service.

Configuration comes only from the environment (and an optional ``.env`` file), is read once
into a settings object (``get_settings()`` in each service is cached) and is never read at
import time. Every variable is declared once, with its type and default, in a settings class;
``README.md`` lists them all.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_TOKENS = {"", "change-me", "changeme", "dev-token"}


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


class AdminSettings(BaseSettings):
    """Bearer token for admin endpoints (ADMIN_TOKEN)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    admin_token: str = Field(default="", description="Bearer token for admin endpoints (ADMIN_TOKEN).")


def check_admin_token(token: str, environment: str) -> None:
    """Refuse placeholder secrets outside development."""
    if environment != "development" and token in PLACEHOLDER_TOKENS:
        raise RuntimeError("ADMIN_TOKEN must be set to a real secret when ENVIRONMENT is not development")
