"""Free ports and an in-thread uvicorn server: real HTTP endpoints for tests, on ports nobody holds."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadServer:
    """A FastAPI app served by uvicorn in a thread (a real HTTP endpoint on a free port)."""

    def __init__(self, app: FastAPI, start_timeout: float = 60.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.error: BaseException | None = None
        self._done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True, name=f"thread-server-{self.port}")

    def _serve(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # noqa: BLE001 - kept and raised again in the test's thread
            self.error = exc
        finally:
            self._done.set()

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        # uvicorn sets ``started`` once it listens; the thread ending first means it failed to start
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if self._done.wait(0.05):
                raise RuntimeError(
                    f"thread server on port {self.port} stopped before serving"
                ) from self.error
            if time.monotonic() > deadline:
                self.server.should_exit = True
                raise TimeoutError(
                    f"thread server on port {self.port} not serving after {self.start_timeout}s"
                )
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        if self.error is not None:
            raise RuntimeError(f"thread server on port {self.port} failed") from self.error
