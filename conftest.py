"""Fixtures shared by every test folder: free ports, a real mlflow server, PostgreSQL.

``REQUIRE_SERVICES=1`` (set by ``.ci/run``) turns a skip for a missing PostgreSQL or Docker
into a failure, since CI here has both.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gradeflow_shared.procs import ServiceProcess, bin_path, free_port

REPO = Path(__file__).resolve().parent
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def need(reason: str) -> None:
    """Skip with a reason, or fail when REQUIRE_SERVICES=1."""
    if os.environ.get("REQUIRE_SERVICES") == "1":
        pytest.fail(f"REQUIRE_SERVICES=1 but: {reason}")
    pytest.skip(reason)


def _pg_available() -> str | None:
    try:
        import sqlalchemy as sa

        eng = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.execute(sa.text("select 1"))
        eng.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}: {str(exc)[:200]}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema (dropped afterwards); skips without PostgreSQL."""
    problem = _pg_available()
    if problem:
        need(problem)
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:10]}"
    eng = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(sa.text(f'create schema "{schema}"'))
    url = f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        with eng.connect() as c:
            c.execute(sa.text(f'drop schema "{schema}" cascade'))
        eng.dispose()


def start_mlflow(tmp: Path, backend: str | None = None, **extra: str) -> ServiceProcess:
    """``gradeflow-mlflow`` on a free port, DATA_DIR=tmp; ``extra`` adds environment variables."""
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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A real ``mlflow server`` on a free port with a SQLite backend (one per test session)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    svc = start_mlflow(tmp)
    try:
        yield svc
    finally:
        svc.stop()
