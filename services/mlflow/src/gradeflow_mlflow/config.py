"""Settings of the tracking server (environment variables, read once)."""

from __future__ import annotations

from functools import lru_cache

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

    def backend_uri(self) -> str:
        if self.mlflow_backend_store_uri:
            return self.mlflow_backend_store_uri
        return f"sqlite:///{self.service_dir('mlflow') / 'mlflow.db'}"

    def artifacts_destination(self) -> str:
        if self.mlflow_artifacts_destination:
            return self.mlflow_artifacts_destination
        return str(self.service_dir("mlflow") / "artifacts")


@lru_cache
def get_settings() -> MlflowSettings:
    return MlflowSettings()
