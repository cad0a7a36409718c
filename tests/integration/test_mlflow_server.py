"""services/mlflow: a real ``mlflow server`` process, SQLite and PostgreSQL, Host-header allow list."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gradeflow_shared.procs import ServiceProcess
from tests.support.services import start_mlflow

pytestmark = pytest.mark.integration

SEARCH = "/api/2.0/mlflow/experiments/search"


def _search(url: str, host: str) -> httpx.Response:
    return httpx.post(url + SEARCH, json={"max_results": 5}, headers={"Host": host}, timeout=10)


def test_health_and_allowed_hosts(mlflow_server: ServiceProcess) -> None:
    url = mlflow_server.url  # type: ignore[attr-defined]
    assert httpx.get(url + "/health", timeout=5).status_code == 200
    port = url.rsplit(":", 1)[1]
    # localhost:PORT and the compose name mlflow:5000 both pass the Host check ...
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "mlflow:5000", "mlflow"):
        r = _search(url, host)
        assert r.status_code == 200, (host, r.text[:200])
        assert "experiments" in r.json()
    # ... and a foreign host is still refused (the middleware is not switched off)
    assert _search(url, "evil.example:5000").status_code == 403


def test_sqlite_backend_lives_in_data_dir(mlflow_server: ServiceProcess) -> None:
    data_dir = Path(mlflow_server.env["DATA_DIR"])
    assert (data_dir / "mlflow" / "mlflow.db").is_file()


@pytest.mark.postgres
def test_postgres_backend(postgres_url: str, tmp_path: Path) -> None:
    svc = start_mlflow(tmp_path, backend=postgres_url)
    try:
        url = svc.url  # type: ignore[attr-defined]
        r = httpx.post(url + "/api/2.0/mlflow/experiments/create", json={"name": "pg-check"}, timeout=10)
        assert r.status_code == 200, r.text[:300]
        names = [e["name"] for e in _search(url, "localhost").json()["experiments"]]
        assert "pg-check" in names
        assert not (tmp_path / "mlflow" / "mlflow.db").exists()
    finally:
        svc.stop()
    # the experiment is really in PostgreSQL, in the test's own schema
    import sqlalchemy as sa

    eng = sa.create_engine(postgres_url)
    with eng.connect() as c:
        rows = c.execute(sa.text("select name from experiments")).scalars().all()
    eng.dispose()
    assert "pg-check" in rows
