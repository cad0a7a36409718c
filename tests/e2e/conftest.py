"""The platform for end-to-end tests: the four services as real processes on free ports, or the
URLs of a platform already running (``E2E_INFERENCE_URL`` etc.; the container test uses that)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gradeflow_shared.procs import ServiceProcess, bin_path
from gradeflow_testkit.loop import Urls
from gradeflow_testkit.servers import free_port

E2E_TOKEN = "e2e-token-of-the-end-to-end-tests"


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        item.session.stash.setdefault("e2e_failed", True)  # type: ignore[attr-defined]


def _external() -> Urls | None:
    inference = os.environ.get("E2E_INFERENCE_URL")
    if not inference:
        return None
    return Urls(
        trainer=os.environ["E2E_TRAINER_URL"],
        inference=inference,
        monitor=os.environ["E2E_MONITOR_URL"],
        mlflow=os.environ["E2E_MLFLOW_URL"],
        token=os.environ.get("E2E_ADMIN_TOKEN", os.environ.get("ADMIN_TOKEN", "")),
    )


def local_stack(data_dir: Path, extra_env: dict[str, str] | None = None) -> tuple[Urls, list[ServiceProcess]]:
    """Start mlflow, trainer, inference and monitor (in that order) on free ports."""
    ports = {name: free_port() for name in ("mlflow", "trainer", "inference", "monitor")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = {
        "DATA_DIR": str(data_dir),
        "HOST": "127.0.0.1",
        "ADMIN_TOKEN": E2E_TOKEN,
        "MLFLOW_PORT": str(ports["mlflow"]),
        "TRAINER_PORT": str(ports["trainer"]),
        "INFERENCE_PORT": str(ports["inference"]),
        "MONITOR_PORT": str(ports["monitor"]),
        "MLFLOW_TRACKING_URI": urls["mlflow"],
        "TRAINER_URL": urls["trainer"],
        "INFERENCE_URL": urls["inference"],
        "MONITOR_URL": urls["monitor"],
        "LOG_LEVEL": "INFO",
        **(extra_env or {}),
    }
    procs: list[ServiceProcess] = []
    try:
        for name in ("mlflow", "trainer", "inference", "monitor"):
            svc = ServiceProcess(
                name=name,
                cmd=[bin_path(f"gradeflow-{name}")],
                env=env,
                log_path=data_dir / "logs" / f"{name}.log",
                health_url=f"{urls[name]}/health",
            )
            procs.append(svc.start(wait=180))
    except Exception:
        for p in procs:
            print(f"----- {p.name} log -----\n{p.tail(200)}")
            p.stop()
        raise
    return Urls(urls["trainer"], urls["inference"], urls["monitor"], urls["mlflow"], E2E_TOKEN), procs


def print_logs(procs: list[ServiceProcess]) -> None:
    for p in procs:
        print(f"\n----- {p.name} log ({p.log_path}) -----\n{p.tail(150)}")
