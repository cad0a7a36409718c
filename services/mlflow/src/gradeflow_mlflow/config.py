"""Settings of the tracking server (environment variables, read once)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from gradeflow_shared.settings import BaseServiceSettings

DEFAULT_ALLOWED_HOSTS = "mlflow,mlflow:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*,[::1],[::1]:*"


class MlflowSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    mlflow_port: int = Field(default=5000, description="Port of the MLflow server and UI (MLFLOW_PORT).")
    mlflow_backend_store_uri: str = Field(
        default="",
        description="Backend store URL (MLFLOW_BACKEND_STORE_URI); default sqlite:///DATA_DIR/mlflow/mlflow.db; "
        "postgresql+psycopg2://user@host/db for PostgreSQL.",
    )
    mlflow_artifacts_destination: str = Field(
        default="", description="Where served artifacts are stored (MLFLOW_ARTIFACTS_DESTINATION)."
    )
    mlflow_allowed_hosts: str = Field(
        default=DEFAULT_ALLOWED_HOSTS,
        description="Host headers the server accepts (MLFLOW_ALLOWED_HOSTS); ports need the ':*' form.",
    )
    mlflow_workers: int = Field(default=1, description="Server worker processes (MLFLOW_WORKERS).")
    mlflow_cors_allowed_origins: str = Field(
        default="",
        description="Origins allowed to call the API from a browser page (MLFLOW_CORS_ALLOWED_ORIGINS, "
        "comma-separated); default the UI's own origins http://localhost:PORT and http://127.0.0.1:PORT. "
        "'*' is refused.",
    )
    mlflow_auth: Literal["", "basic", "none"] = Field(
        default="",
        description="MLflow's own login (MLFLOW_AUTH): 'basic' runs `mlflow server --app-name basic-auth` "
        "(HTTP basic auth on the UI and API, users in DATA_DIR/mlflow/basic_auth.db), 'none' runs it open; "
        "default 'basic' when ENVIRONMENT=production, else 'none'.",
    )
    mlflow_tracking_username: str = Field(
        default="admin",
        description="MLflow user (MLFLOW_TRACKING_USERNAME): with MLFLOW_AUTH=basic the server creates this "
        "admin on its first start, and the trainer's MLflow client logs in with it.",
    )
    mlflow_tracking_password: str = Field(
        default="",
        description="Password of MLFLOW_TRACKING_USERNAME (MLFLOW_TRACKING_PASSWORD); required with "
        "MLFLOW_AUTH=basic (at least 16 characters, no placeholder); the server sets the admin's password "
        "to it at every start; the trainer's MLflow client sends it.",
    )

    def backend_uri(self) -> str:
        if self.mlflow_backend_store_uri:
            return self.mlflow_backend_store_uri
        return f"sqlite:///{self.service_dir('mlflow') / 'mlflow.db'}"

    def auth_enabled(self) -> bool:
        if self.mlflow_auth:
            return self.mlflow_auth == "basic"
        return self.environment == "production"

    def cors_origins(self, port: int) -> str:
        if self.mlflow_cors_allowed_origins:
            return self.mlflow_cors_allowed_origins
        return f"http://localhost:{port},http://127.0.0.1:{port}"

    def artifacts_destination(self) -> str:
        if self.mlflow_artifacts_destination:
            return self.mlflow_artifacts_destination
        return str(self.service_dir("mlflow") / "artifacts")


@lru_cache
def get_settings() -> MlflowSettings:
    return MlflowSettings()
