"""Fixtures shared by every test folder: a real mlflow server, PostgreSQL, Redis.

``REQUIRE_SERVICES=1`` (set by ``.ci/run``) turns a skip for a missing PostgreSQL or Docker
into a failure, since CI here has both. The helpers behind them live in ``gradeflow_testkit.services``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from gradeflow_shared.features.feast_env import PROMETHEUS_ENV
from gradeflow_shared.procs import ServiceProcess
from gradeflow_testkit.services import PG_ADMIN_URL, REDIS_URL, need, pg_problem, redis_problem, start_mlflow


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema (dropped afterwards); skips without PostgreSQL."""
    problem = pg_problem()
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


@pytest.fixture(autouse=True)
def _prometheus_env_kept() -> Iterator[None]:
    """A test that imports feast directly (``import feast`` sets PROMETHEUS_MULTIPROC_DIR) must not
    leave it set: services started by later tests would inherit it and keep their metrics in files.
    The services themselves import feast through ``quiet_feast_import``."""
    saved = {k: os.environ.get(k) for k in PROMETHEUS_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def redis_url() -> str:
    """The Redis server of TEST_REDIS_URL (default 127.0.0.1:6379, db 0); skips without it.

    Shared by every test: a test keeps to keys of its own (e.g. a unique feature project).
    """
    problem = redis_problem()
    if problem:
        need(problem)
    return REDIS_URL


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A real ``mlflow server`` on a free port with a SQLite backend (one per test session)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    svc = start_mlflow(tmp)
    try:
        yield svc
    finally:
        svc.stop()
