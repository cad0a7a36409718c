"""``gradeflow-mlflow``: run a real ``mlflow server`` with the platform's settings.

SQLite in DATA_DIR/mlflow by default (the server is the only process that opens it),
PostgreSQL by URL; artifacts are served over HTTP (``--serve-artifacts``), so no client needs
the artifact folder mounted; the Host-header allow list accepts ``localhost:PORT`` and the
compose name ``mlflow:5000`` (PITFALLS.md). The process execs into mlflow, so signals reach it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

from gradeflow_shared.logging import configure_logging

from .config import get_settings

logger = logging.getLogger(__name__)


def server_command(
    port: int | None = None, backend: str | None = None, artifacts: str | None = None
) -> list[str]:
    s = get_settings()
    exe = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    return [
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
    ]


def server_env() -> dict[str, str]:
    s = get_settings()
    env = dict(os.environ)
    env["MLFLOW_SERVER_ALLOWED_HOSTS"] = s.mlflow_allowed_hosts
    env.setdefault("MLFLOW_SERVER_CORS_ALLOWED_ORIGINS", "*")
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gradeflow-mlflow", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None, help="override MLFLOW_PORT")
    args = parser.parse_args(argv)
    s = get_settings()
    configure_logging(s.log_level, s.log_json, service="mlflow")
    cmd = server_command(port=args.port)
    logger.info(
        "MLflow server: backend %s, artifacts %s",
        _redact(cmd[cmd.index("--backend-store-uri") + 1]),
        cmd[cmd.index("--artifacts-destination") + 1],
    )
    logger.info(
        "MLflow UI: http://%s:%s",
        "localhost" if s.host in ("0.0.0.0", "127.0.0.1") else s.host,
        args.port or s.mlflow_port,
    )
    os.execve(cmd[0], cmd, server_env())


def _redact(uri: str) -> str:
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else uri
    return uri


if __name__ == "__main__":
    main()
