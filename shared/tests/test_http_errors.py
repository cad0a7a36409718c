"""The HTTP client (retries, error rebuild) and the error model, against a real local server."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from gradeflow_shared.errors import (
    Conflict,
    GradeflowError,
    InvalidInput,
    NotFound,
    UpstreamError,
    install_error_handlers,
)
from gradeflow_shared.http import ServiceClient
from gradeflow_testkit.servers import free_port


class Body(BaseModel):
    age: int


def _app(calls: dict[str, int]) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/flaky")
    def flaky() -> dict[str, int]:
        calls["flaky"] = calls.get("flaky", 0) + 1
        if calls["flaky"] < 3:
            from fastapi.responses import JSONResponse

            return JSONResponse({"error_code": "X", "message": "busy"}, status_code=503)  # type: ignore[return-value]
        return {"calls": calls["flaky"]}

    @app.get("/missing")
    def missing() -> None:
        raise NotFound("job abc not found", details={"id": "abc"})

    @app.post("/conflict")
    def conflict() -> None:
        raise Conflict("already running")

    @app.post("/body")
    def body(b: Body) -> dict[str, int]:
        return {"age": b.age}

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, dict[str, int]]]:
    calls: dict[str, int] = {}
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(_app(calls), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    import time

    while not srv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", calls
    srv.should_exit = True
    t.join(5)


def test_retries_503_then_succeeds(server: tuple[str, dict[str, int]]) -> None:
    url, calls = server
    with ServiceClient(url, retries=3, backoff=0.01) as c:
        assert c.get("/flaky") == {"calls": 3}
    assert calls["flaky"] == 3


def test_error_rebuilt_with_type_and_details(server: tuple[str, dict[str, int]]) -> None:
    url, _ = server
    with ServiceClient(url, retries=0) as c:
        with pytest.raises(NotFound) as exc:
            c.get("/missing")
        assert exc.value.details == {"id": "abc"}
        with pytest.raises(Conflict, match="already running"):
            c.post("/conflict")


def test_validation_error_names_the_field(server: tuple[str, dict[str, int]]) -> None:
    url, _ = server
    with ServiceClient(url, retries=0) as c, pytest.raises(InvalidInput) as exc:
        c.post("/body", json={"age": "old"})
    assert "age" in exc.value.message
    assert exc.value.details[0]["field"] == "age"


def test_connection_refused_is_upstream_error_after_retries() -> None:
    port = free_port()
    with ServiceClient(f"http://127.0.0.1:{port}", retries=2, backoff=0.01, timeout=1) as c:
        with pytest.raises(UpstreamError, match="ConnectError"):
            c.get("/health")


def test_error_to_dict() -> None:
    err = InvalidInput("bad age", details=[{"field": "age"}])
    assert err.to_dict() == {
        "error_code": "INVALID_INPUT",
        "message": "bad age",
        "details": [{"field": "age"}],
    }
    assert isinstance(err, GradeflowError) and err.status_code == 422


def test_undecodable_body_and_unknown_paths_get_the_one_error_body() -> None:
    from fastapi.testclient import TestClient

    app = FastAPI()
    install_error_handlers(app)

    class Body(BaseModel):
        n: int

    @app.post("/echo")
    def echo(body: Body) -> dict[str, int]:
        return {"n": body.n}

    with TestClient(app) as c:
        r = c.post("/echo", content=b"\xf0\x28\x8c\x28", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error_code"] == "INVALID_INPUT", r.text
        assert r.json()["message"].startswith("body:")
        r = c.get("/nowhere")
        assert r.status_code == 404 and r.json()["error_code"] == "NOT_FOUND"
        r = c.get("/echo")
        assert r.status_code == 405 and r.json()["error_code"] == "METHOD_NOT_ALLOWED"
