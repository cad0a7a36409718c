"""Start and stop the platform's services as local processes (``make up``; the tests use it too)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .http import wait_until_healthy


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def bin_path(name: str) -> str:
    """A console script of this environment (``.venv/bin/<name>``)."""
    return str(Path(sys.executable).parent / name)


@dataclass
class ServiceProcess:
    """A service started as a child process with its output in a log file."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    health_url: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, wait: float = 90.0) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        full_env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(
            self.cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        if self.health_url and wait:
            try:
                self.wait_healthy(wait)
            except Exception:
                self.stop()
                raise
        return self

    def wait_healthy(self, timeout: float = 90.0) -> None:
        assert self.health_url
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before it was healthy:\n{self.tail()}"
                )
            try:
                wait_until_healthy(self.health_url, timeout=min(1.0, max(0.1, deadline - time.monotonic())))
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.name} not healthy after {timeout:.0f}s:\n{self.tail()}"
                    ) from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:])
