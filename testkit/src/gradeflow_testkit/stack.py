"""The platform for tests that need all of it: the four services as real processes on free ports,
or the URLs of a platform already running (``E2E_INFERENCE_URL`` etc.; the container test uses that).

Used by the end-to-end tests, the offline docs test and ``make fuzz`` (scripts/fuzz.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx

from gradeflow_shared.procs import ServiceProcess, bin_path
from gradeflow_testkit.loop import Urls, wait_for
from gradeflow_testkit.servers import free_port

SERVICES = ("mlflow", "trainer", "inference", "monitor")


def external_platform() -> Urls | None:
    """The running platform named by ``E2E_*_URL`` (token from ``E2E_ADMIN_TOKEN``), if any."""
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
    """Start mlflow, trainer, inference and monitor (in that order) on free ports, each healthy.

    ``DATA_DIR`` is ``data_dir``; ADMIN_TOKEN and LABELLER_TOKEN are fresh random tokens (the admin
    one is ``Urls.token``). If one service does not come up, the others are stopped and their logs
    printed before the error propagates.
    """
    ports = {name: free_port() for name in SERVICES}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    token = secrets.token_urlsafe(32)
    env = {
        "DATA_DIR": str(data_dir),
        "HOST": "127.0.0.1",
        "ADMIN_TOKEN": token,
        "LABELLER_TOKEN": secrets.token_urlsafe(32),
        "MLFLOW_TRACKING_URI": urls["mlflow"],
        "TRAINER_URL": urls["trainer"],
        "INFERENCE_URL": urls["inference"],
        "MONITOR_URL": urls["monitor"],
        "LOG_LEVEL": "INFO",
        **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()},
        **(extra_env or {}),
    }
    procs: list[ServiceProcess] = []
    try:
        for name in SERVICES:
            svc = ServiceProcess(
                name=name,
                cmd=[bin_path(f"gradeflow-{name}")],
                env=env,
                log_path=data_dir / "logs" / f"{name}.log",
                health_url=f"{urls[name]}/health",
            )
            procs.append(svc.start(wait=180))
    except (OSError, RuntimeError, TimeoutError):
        print_logs(procs)
        stop_stack(procs)
        raise
    return Urls(urls["trainer"], urls["inference"], urls["monitor"], urls["mlflow"], token), procs


def wait_model_served(urls: Urls, timeout: float = 600) -> None:
    """Wait until inference answers /ready (the trainer trained and exported a first model)."""
    wait_for(
        "inference to serve a model",
        lambda: httpx.get(f"{urls.inference}/ready", timeout=5).status_code == 200,
        timeout=timeout,
        interval=2,
    )


def stop_stack(procs: list[ServiceProcess]) -> None:
    """Stop the services, last started first."""
    for p in reversed(procs):
        p.stop()


def print_logs(procs: list[ServiceProcess], lines: int = 150) -> None:
    for p in procs:
        print(f"\n----- {p.name} log ({p.log_path}) -----\n{p.tail(lines)}")  # noqa: T201


@contextlib.contextmanager
def running_stack(
    data_dir: Path, extra_env: dict[str, str] | None = None, log_lines: int = 80
) -> Iterator[Urls]:
    """``local_stack`` for a module fixture: yields the URLs, prints every log when the body fails, and
    always stops the services."""
    urls, procs = local_stack(data_dir, extra_env)
    ok = False
    try:
        yield urls
        ok = True
    finally:
        if not ok:
            print_logs(procs, lines=log_lines)
        stop_stack(procs)
