"""Skipping for a missing service (PostgreSQL, Redis), and a real mlflow server on a free port."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gradeflow_shared.procs import ServiceProcess, bin_path
from gradeflow_testkit.servers import free_port

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def need(reason: str) -> None:
    """Skip with a reason, or fail when REQUIRE_SERVICES=1."""
    if os.environ.get("REQUIRE_SERVICES") == "1":
        pytest.fail(f"REQUIRE_SERVICES=1 but: {reason}")
    pytest.skip(reason)


def pg_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None when it answers."""
    try:
        import sqlalchemy as sa

        eng = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.execute(sa.text("select 1"))
        eng.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}: {str(exc)[:200]}"


def redis_problem() -> str | None:
    """Why Redis cannot be used, or None when it answers PING."""
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        client.close()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return f"Redis not reachable at {REDIS_URL}: {exc.__class__.__name__}: {str(exc)[:200]}"


def start_mlflow(tmp: Path, backend: str | None = None, **extra: str) -> ServiceProcess:
    """A real ``gradeflow-mlflow`` on a free port (``.url`` set), healthy when this returns; ``extra`` adds
    environment variables."""
    port = free_port()
    env = {
        "DATA_DIR": str(tmp),
        "MLFLOW_PORT": str(port),
        "HOST": "127.0.0.1",
        **extra,
    }
    if backend:
        env["MLFLOW_BACKEND_STORE_URI"] = backend
    svc = ServiceProcess(
        name="mlflow",
        cmd=[bin_path("gradeflow-mlflow")],
        env=env,
        log_path=tmp / "logs" / "mlflow.log",
        health_url=f"http://127.0.0.1:{port}/health",
    )
    svc.start(wait=120)
    svc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return svc
