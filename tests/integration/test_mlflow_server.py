"""services/mlflow: a real ``mlflow server`` process, SQLite and PostgreSQL, Host-header allow list,
CORS, no job runner, basic auth."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gradeflow_shared.procs import ServiceProcess, bin_path
from gradeflow_testkit import prom
from gradeflow_testkit.servers import free_port
from gradeflow_testkit.services import start_mlflow

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


# ------------------------------------------------------------------ posture: CORS, job runner, basic auth
REGISTRY = "/api/2.0/mlflow/registered-models/search"
PASSWORD = "integration-test-password-0123"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp("mlflow-auth")
    # ENVIRONMENT=production turns the login on by default (MLFLOW_AUTH unset)
    svc = start_mlflow(tmp, ENVIRONMENT="production", MLFLOW_TRACKING_PASSWORD=PASSWORD)
    try:
        yield svc
    finally:
        svc.stop()


def _descendants(pid: int) -> list[str]:
    """Command lines of ``pid`` and every process below it."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True, check=True)
    children: dict[int, list[int]] = {}
    args: dict[int, str] = {}
    for line in out.stdout.splitlines():
        p, pp, *rest = line.split(None, 2)
        children.setdefault(int(pp), []).append(int(p))
        args[int(p)] = rest[0] if rest else ""
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        if p in args:
            found.append(args[p])
        stack += children.get(p, [])
    return found


def _preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(
        url + SEARCH,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=10,
    )


@pytest.mark.parametrize("fixture", ["mlflow_server", "auth_server"])
def test_cors_allows_only_the_ui_origin(fixture: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(fixture).url
    port = url.rsplit(":", 1)[1]
    foreign = _preflight(url, "http://evil.example")
    assert foreign.headers.get("access-control-allow-origin") not in ("*", "http://evil.example"), (
        foreign.headers
    )
    # a state-changing call from a foreign page is refused by the server itself, not only by the browser
    created = httpx.post(
        url + "/api/2.0/mlflow/experiments/create",
        json={"name": "from-evil"},
        headers={"Origin": "http://evil.example"},
        auth=("admin", PASSWORD),
        timeout=10,
    )
    assert created.status_code == 403, created.text[:200]
    own = _preflight(url, f"http://localhost:{port}")
    assert own.headers.get("access-control-allow-origin") == f"http://localhost:{port}", (
        own.status_code,
        own.headers,
    )


@pytest.mark.parametrize("fixture", ["mlflow_server", "auth_server"])
def test_no_job_runner_processes(fixture: str, request: pytest.FixtureRequest) -> None:
    svc = request.getfixturevalue(fixture)
    assert svc.proc is not None
    procs = _descendants(svc.proc.pid)
    assert not [a for a in procs if "huey" in a or "_job_runner" in a], procs
    assert len(procs) <= 1 + int(svc.env.get("MLFLOW_WORKERS", "1")), procs  # mlflow server + its workers


def test_basic_auth_guards_the_registry(auth_server: ServiceProcess) -> None:
    url = auth_server.url  # type: ignore[attr-defined]
    assert httpx.get(url + REGISTRY, timeout=10).status_code == 401
    assert httpx.get(url + "/", timeout=10).status_code == 401  # the UI too
    assert httpx.get(url + REGISTRY, auth=("admin", "wrong-password-123456"), timeout=10).status_code == 401
    ok = httpx.get(url + REGISTRY, auth=("admin", PASSWORD), timeout=10)
    assert ok.status_code == 200, ok.text[:300]
    # the Host allow list still applies behind the login
    assert _search_auth(url, "evil.example:5000").status_code == 403


def test_prometheus_metrics_behind_the_host_check_and_the_login(
    mlflow_server: ServiceProcess, auth_server: ServiceProcess
) -> None:
    """``--expose-prometheus``: /metrics counts the server's requests; it is no way around the Host
    check, nor (auth on) around the login, and stale files of earlier processes were cleared at start."""
    url = mlflow_server.url  # type: ignore[attr-defined]
    # summed over every method and path label: other tests of this module use the same server
    before = prom.total(
        httpx.get(url + "/metrics", timeout=10).text, "mlflow_http_request_total", status="200"
    )
    for _ in range(3):
        assert _search(url, "mlflow:5000").status_code == 200
    text = httpx.get(url + "/metrics", headers={"Host": "mlflow:5000"}, timeout=10).text
    after = prom.total(text, "mlflow_http_request_total", status="200")
    assert after >= before + 3, (before, after)
    assert httpx.get(url + "/metrics", headers={"Host": "evil.example"}, timeout=10).status_code == 403
    data_dir = Path(mlflow_server.env["DATA_DIR"])
    assert list((data_dir / "mlflow" / "prometheus").glob("*.db"))  # the exporter's per-process files

    url = auth_server.url  # type: ignore[attr-defined]
    assert httpx.get(url + "/metrics", timeout=10).status_code == 401
    ok = httpx.get(url + "/metrics", auth=("admin", PASSWORD), headers={"Host": "mlflow:5000"}, timeout=10)
    assert ok.status_code == 200 and "mlflow_http_request_duration_seconds" in ok.text


def _search_auth(url: str, host: str) -> httpx.Response:
    return httpx.post(
        url + SEARCH, json={"max_results": 1}, headers={"Host": host}, auth=("admin", PASSWORD), timeout=10
    )


def test_mlflow_client_logs_in_from_the_environment(
    auth_server: ServiceProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's path: MlflowClient reads MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    url = auth_server.url  # type: ignore[attr-defined]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(MlflowException):
        MlflowClient(url, registry_uri=url).search_registered_models()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    client = MlflowClient(url, registry_uri=url)  # not a registry URI another test set globally
    client.create_registered_model("auth-check")
    assert "auth-check" in [m.name for m in client.search_registered_models()]


def test_healthcheck_probes_the_api_with_the_login(auth_server: ServiceProcess) -> None:
    port = auth_server.url.rsplit(":", 1)[1]  # type: ignore[attr-defined]
    env = {**os.environ, "MLFLOW_PORT": port, "DATA_DIR": auth_server.env["DATA_DIR"], "MLFLOW_AUTH": "basic"}
    check = [bin_path("gradeflow-mlflow"), "--healthcheck"]
    good = subprocess.run(
        check, env={**env, "MLFLOW_TRACKING_PASSWORD": PASSWORD}, capture_output=True, timeout=60
    )
    assert good.returncode == 0, good.stderr[-500:]
    bad = subprocess.run(
        check, env={**env, "MLFLOW_TRACKING_PASSWORD": "not-the-password-0"}, capture_output=True, timeout=60
    )
    assert bad.returncode == 1 and b"401" in bad.stderr, bad.stderr[-500:]


def test_changed_password_applies_at_restart(tmp_path: Path) -> None:
    """MLflow itself keeps the first admin password; the wrapper sets the configured one at start."""
    svc = start_mlflow(tmp_path, MLFLOW_AUTH="basic", MLFLOW_TRACKING_PASSWORD=PASSWORD)
    svc.stop()
    new = "a-rotated-password-98765"
    svc = start_mlflow(tmp_path, MLFLOW_AUTH="basic", MLFLOW_TRACKING_PASSWORD=new)
    try:
        url = svc.url  # type: ignore[attr-defined]
        assert httpx.get(url + REGISTRY, auth=("admin", new), timeout=10).status_code == 200
        assert httpx.get(url + REGISTRY, auth=("admin", PASSWORD), timeout=10).status_code == 401
    finally:
        svc.stop()


def test_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    env = {**os.environ, "DATA_DIR": str(tmp_path), "MLFLOW_AUTH": "basic", "MLFLOW_TRACKING_PASSWORD": ""}
    r = subprocess.run(
        [bin_path("gradeflow-mlflow"), "--port", str(free_port())], env=env, capture_output=True, timeout=60
    )
    assert r.returncode != 0 and b"MLFLOW_TRACKING_PASSWORD" in r.stderr, r.stderr[-500:]
