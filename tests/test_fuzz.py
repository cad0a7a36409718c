"""``make fuzz``'s schemathesis command works with the installed schemathesis and its exit code tells
a clean API from one with a server error or an undocumented status (against tiny in-process apps)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException

from gradeflow_testkit.servers import free_port
from scripts.fuzz import schemathesis_cmd

TOKEN = "fuzz-test-token-0123456789abcdef"


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _app(bug: str | None) -> FastAPI:
    app = FastAPI()

    @app.get("/square/{n}", responses={404: {"description": "n too large"}})
    def square(n: int) -> dict[str, int]:
        if n > 1000:
            raise HTTPException(404 if bug != "undocumented" else 409, "n too large")
        if bug == "server_error" and n == 0:
            raise RuntimeError("zero")
        return {"square": n * n}

    return app


def _fuzz(base: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    cmd = schemathesis_cmd(base, TOKEN, seed=1, max_examples=30, report=tmp / "junit.xml")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, cwd=tmp)


def test_a_clean_api_passes(tmp_path: Path) -> None:
    with serving(_app(None)) as base:
        out = _fuzz(base, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert (tmp_path / "junit.xml").is_file()


def test_a_server_error_fails_the_run(tmp_path: Path) -> None:
    with serving(_app("server_error")) as base:
        out = _fuzz(base, tmp_path)
    assert out.returncode != 0
    assert "Server error" in out.stdout, out.stdout[-3000:]


def test_an_undocumented_status_fails_the_run(tmp_path: Path) -> None:
    with serving(_app("undocumented")) as base:
        out = _fuzz(base, tmp_path)
    assert out.returncode != 0
    assert "Undocumented status code" in out.stdout, out.stdout[-3000:]
