"""``gradeflow-mlflow``: run a real ``mlflow server`` with the platform's settings.

SQLite in DATA_DIR/mlflow by default (the server is the only process that opens it),
PostgreSQL by URL; artifacts are served over HTTP (``--serve-artifacts``), so no client needs
the artifact folder mounted. MLflow's Host-header check stays on, with an allow list holding
``localhost:PORT`` and the compose name ``mlflow:5000``: MLflow answers 403 to any other Host,
and its ``/health`` route skips that check, so only an API call proves the trainer can reach it.

Posture: browser calls from other origins are refused (CORS limited to the UI's own origin),
telemetry is off, MLflow's server-side job runner (GenAI jobs, not used here) is not started,
and with ``MLFLOW_AUTH=basic`` (the default in production) the server is MLflow's basic-auth app:
every UI and API call needs the MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD login.
Prometheus metrics are on (``--expose-prometheus``: MLflow's prometheus_flask_exporter, requests and
latencies at ``/metrics``); ``/metrics`` passes the same Host check and, with auth on, needs the same
login. The process execs into mlflow, so signals reach it.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import secrets
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from gradeflow_shared.errors import ConfigError
from gradeflow_shared.logging import configure_logging
from gradeflow_shared.settings import require_secret

from .config import MlflowSettings, get_settings

logger = logging.getLogger(__name__)

# the same posture for every start; none of these is a knob of the platform
FIXED_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}
AUTH_INI = "basic_auth.ini"
AUTH_DB = "basic_auth.db"
SECRET_KEY_FILE = "flask_secret_key"
PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"
# Checking a password costs ~0.1-0.3 s of CPU (scrypt) and MLflow does it on every request unless
# its cache is on: a training run makes hundreds of calls. A cached login stays valid this long in
# a worker; the password itself changes only at a restart (sync_admin_password), which empties it.
AUTH_CACHE_TTL_SECONDS = 60
PROMETHEUS_DIR = "prometheus"  # in DATA_DIR/mlflow: the exporter's per-process files (multiprocess mode)


def server_command(
    port: int | None = None, backend: str | None = None, artifacts: str | None = None
) -> list[str]:
    s = get_settings()
    exe = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    cmd = [
        exe,
        "server",
        "--host",
        s.host,
        "--port",
        str(port or s.mlflow_port),
        "--backend-store-uri",
        backend or s.backend_uri(),
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts or s.artifacts_destination(),
        "--workers",
        str(s.mlflow_workers),
        "--expose-prometheus",
        str(s.service_dir("mlflow") / PROMETHEUS_DIR),
    ]
    if s.auth_enabled():
        cmd += ["--app-name", "basic-auth"]
    return cmd


def reset_prometheus_dir(s: MlflowSettings) -> Path:
    """Empty the exporter's folder before the server starts: its files are per process id, and those
    of processes gone (an earlier start) would otherwise keep adding their old counts to /metrics."""
    folder = s.service_dir("mlflow") / PROMETHEUS_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def check_settings(s: MlflowSettings) -> None:
    """Refuse a configuration that would open the server up (ConfigError naming the variable)."""
    origins = [o.strip() for o in s.cors_origins(s.mlflow_port).split(",")]
    if "*" in origins:
        raise ConfigError(
            "MLFLOW_CORS_ALLOWED_ORIGINS must not be '*': list the origins of the pages that may call "
            "MLflow from a browser (default: the UI's own origin)"
        )
    if s.auth_enabled():
        if not s.mlflow_tracking_username.strip():
            raise ConfigError("MLFLOW_TRACKING_USERNAME is empty: MLFLOW_AUTH=basic needs an admin user name")
        require_secret("MLFLOW_TRACKING_PASSWORD", s.mlflow_tracking_password)


def write_auth_config(s: MlflowSettings) -> Path:
    """The basic-auth app's ini in DATA_DIR/mlflow: its user database is a file beside it.

    No password in the file: the admin's comes from MLFLOW_AUTH_ADMIN_PASSWORD at start.
    """
    folder = s.service_dir("mlflow")
    path = folder / AUTH_INI
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{folder / AUTH_DB}\n"
        f"admin_username = {s.mlflow_tracking_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_SECONDS}\n"
    )
    return path


def flask_secret_key(s: MlflowSettings) -> str:
    """The basic-auth app's CSRF signing key: random, made once and kept (mode 0600) in
    DATA_DIR/mlflow, so every worker and every restart share it."""
    path = s.service_dir("mlflow") / SECRET_KEY_FILE
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def sync_admin_password(s: MlflowSettings) -> bool:
    """MLflow creates the admin once and ignores the configured password afterwards: set it to
    MLFLOW_TRACKING_PASSWORD when it differs, so .env stays the one place of the login.

    Returns True when the password was changed.
    """
    db = s.service_dir("mlflow") / AUTH_DB
    if not db.is_file():
        return False  # first start: MLflow creates the admin with this password itself
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{db}")
    try:
        user, password = s.mlflow_tracking_username, s.mlflow_tracking_password
        if not store.has_user(user, use_primary=True):
            return False  # MLflow creates it at start
        if store.authenticate_user(user, password, use_primary=True):
            return False
        store.update_user(user, password=password, is_admin=True)
        logger.warning("MLflow user %s: password set to MLFLOW_TRACKING_PASSWORD", user)
        return True
    finally:
        store.engine.dispose()


def server_env(port: int | None = None) -> dict[str, str]:
    s = get_settings()
    env = dict(os.environ)
    env.update(FIXED_ENV)
    env["MLFLOW_SERVER_ALLOWED_HOSTS"] = s.mlflow_allowed_hosts
    env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] = s.cors_origins(port or s.mlflow_port)
    if s.auth_enabled():
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(s.service_dir("mlflow") / AUTH_INI)
        env["MLFLOW_AUTH_ADMIN_USERNAME"] = s.mlflow_tracking_username
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = s.mlflow_tracking_password
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = flask_secret_key(s)
    return env


def healthcheck(port: int | None = None, host_header: str | None = None, timeout: float = 10.0) -> bool:
    """True when an API call passes (``/health`` skips the Host check and the login, so it proves
    less): sent with the Host the trainer uses and, with auth on, the MLflow login."""
    s = get_settings()
    port = port or s.mlflow_port
    headers = {"Host": host_header or f"mlflow:{port}"}
    if s.auth_enabled():
        login = f"{s.mlflow_tracking_username}:{s.mlflow_tracking_password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(login).decode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{PROBE}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError) as exc:
        logger.warning("MLflow healthcheck failed: %s", exc)
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gradeflow-mlflow", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None, help="override MLFLOW_PORT")
    parser.add_argument(
        "--healthcheck",
        action="store_true",
        help="probe the running server's API (Host mlflow:PORT, the login when auth is on); exit 0 or 1",
    )
    args = parser.parse_args(argv)
    s = get_settings()
    configure_logging(s.log_level, s.log_json, service="mlflow")
    if args.healthcheck:
        sys.exit(0 if healthcheck(args.port) else 1)
    check_settings(s)
    cmd = server_command(port=args.port)
    reset_prometheus_dir(s)
    if s.auth_enabled():
        write_auth_config(s)
        sync_admin_password(s)
    logger.info(
        "MLflow server: backend %s, artifacts %s, login %s",
        _redact(cmd[cmd.index("--backend-store-uri") + 1]),
        cmd[cmd.index("--artifacts-destination") + 1],
        f"basic auth (user {s.mlflow_tracking_username})" if s.auth_enabled() else "none (MLFLOW_AUTH=none)",
    )
    logger.info(
        "MLflow UI: http://%s:%s",
        "localhost" if s.host in ("0.0.0.0", "127.0.0.1") else s.host,
        args.port or s.mlflow_port,
    )
    os.execve(cmd[0], cmd, server_env(args.port))


def _redact(uri: str) -> str:
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else uri
    return uri


if __name__ == "__main__":
    main()
