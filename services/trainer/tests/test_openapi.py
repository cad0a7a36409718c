"""The trainer's OpenAPI document (bearer scheme, summaries, documented statuses) and hostile inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gradeflow_trainer.app import create_app
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.registry import InMemoryRegistry

TOKEN = "s3cret-token-of-the-openapi-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN = {("post", "/retrain"), ("post", "/promote"), ("post", "/rollback")}


@pytest.fixture
def client(tmp_path: Path) -> Any:
    s = TrainerSettings(
        data_dir=tmp_path,
        admin_token=TOKEN,
        train_on_start=False,
        inference_url="",
        mlflow_tracking_uri="http://127.0.0.1:9",
    )
    # no train_fn: no input of these tests reaches a training
    with TestClient(create_app(s, registry=InMemoryRegistry())) as c:
        yield c


def test_openapi_declares_the_bearer_scheme_and_documents_every_operation(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["AdminToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The ADMIN_TOKEN of the platform.",
    }
    assert "ErrorBody" in doc["components"]["schemas"]
    ops = [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items()]
    assert {(m, p) for m, p, _ in ops} >= ADMIN | {("get", "/jobs/{job_id}"), ("get", "/model")}
    for method, path, op in ops:
        where = f"{method.upper()} {path}"
        assert op.get("summary") and op.get("description"), where
        ok = [s for s in op["responses"] if s.startswith("2")]
        assert ok and all("content" in op["responses"][s] for s in ok), where  # a response model
        documented = set(op["responses"])
        if (method, path) in ADMIN:
            assert op["security"] == [{"AdminToken": []}], where
            assert {"401", "422"} <= documented, where
            error = op["responses"]["401"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorBody"}, where
        if "{" in path or op.get("requestBody"):
            assert "422" in documented, where
    assert {"202", "200"} <= set(doc["paths"]["/retrain"]["post"]["responses"])
    assert "404" in doc["paths"]["/jobs/{job_id}"]["get"]["responses"]
    assert "404" in doc["paths"]["/promote"]["post"]["responses"]
    assert "409" in doc["paths"]["/rollback"]["post"]["responses"]


HOSTILE: list[tuple[str, str, Any]] = [
    ("post", "/promote", {"version": 2**63}),
    ("post", "/promote", {"version": 2**64 + 1}),
    ("post", "/promote", {"version": -1}),
    ("post", "/promote", {"version": 0}),
    ("post", "/promote", {"version": 1e308}),
    ("post", "/promote", {"version": "1" * 5000}),
    ("post", "/promote", {"version": 2**31 - 1}),  # in bounds, no such version: 404
    ("post", "/promote", {"version": 1, "reason": "x" * 100_000}),
    ("post", "/promote", [1, 2, 3]),
    ("post", "/promote", "not json"),
    ("post", "/rollback", {"reason": "x" * 10_000}),
    ("post", "/rollback", {"reason": None}),
    ("post", "/retrain", {"reason": "x" * 100_000}),
    ("post", "/retrain", {"monitor_run_id": "m" * 10_000}),
    ("post", "/retrain", {"use_production_data": {"a": 1}}),
    ("post", "/retrain", {"use_production_data": 0}),  # strict: no coercion of 0 to false
    ("post", "/promote", {"version": "3"}),
    ("post", "/promote", {"version": True}),
    ("post", "/promote", {"version": 2.5}),
    ("post", "/promote", b"\xf0\x28\x8c\x28 not utf-8"),  # undecodable body: 422, not a bare 400
    ("post", "/rollback", b")\xc3\x28"),
    ("get", "/jobs/" + "j" * 5000, None),
    ("get", "/jobs/%00%ff", None),
]


@pytest.mark.parametrize(("method", "path", "body"), HOSTILE)
def test_hostile_inputs_never_answer_5xx(client: TestClient, method: str, path: str, body: Any) -> None:
    if isinstance(body, (str, bytes)):
        r = client.request(method, path, content=body, headers={**AUTH, "Content-Type": "application/json"})
    else:
        r = client.request(method, path, json=body, headers=AUTH)
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert r.status_code in (404, 409, 422), (r.status_code, r.text[:300])
    assert set(r.json()) >= {"error_code", "message"}


def test_bounds_name_the_field(client: TestClient) -> None:
    r = client.post("/promote", json={"version": 2**63}, headers=AUTH)
    assert r.status_code == 422 and "version" in r.json()["message"]
    r = client.post("/rollback", json={"reason": "x" * 501}, headers=AUTH)
    assert r.status_code == 422 and "reason" in r.json()["message"]
    assert client.post("/rollback", json={"reason": "x" * 500}, headers=AUTH).status_code == 409


def test_a_json_integer_written_with_a_fraction_of_zero_is_a_version(client: TestClient) -> None:
    """JSON Schema's "integer" includes 282.0: no 422 for it (no such version here: 404)."""
    r = client.post("/promote", json={"version": 282.0}, headers=AUTH)
    assert r.status_code == 404, r.text
