"""The HTTP API in-process (TestClient with the real lifespan, real exports, real SQLite)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from gradeflow_inference.app import create_app
from gradeflow_testkit import exports

from .conftest import LABELLER


def wait_for(pred: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_single_and_batch(client: TestClient, fitted: exports.Fitted) -> None:
    rec = fitted.records[0]
    r = client.post("/predict", json=rec)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == 1 and len(body["predictions"]) == 1
    single = body["predictions"][0]["prediction"]
    r = client.post("/predict", json={"records": fitted.records[:40]})
    assert r.status_code == 200
    items = r.json()["predictions"]
    assert len(items) == 40 and len({i["request_id"] for i in items}) == 40
    assert abs(items[0]["prediction"] - single) < 1e-4
    assert min(i["prediction"] for i in items) >= 0 and max(i["prediction"] for i in items) <= 25


def test_schema_errors_over_http(client: TestClient, fitted: exports.Fitted) -> None:
    rec = dict(fitted.records[0])
    r = client.post("/predict", json={**rec, "age": "old"})
    assert r.status_code == 422
    assert r.json()["details"] == [{"field": "age", "rule": "type", "message": "expected number, got string"}]
    missing = dict(rec)
    del missing["absences"]
    r = client.post("/predict", json={"records": [rec, missing, {**rec, "attendance_pct": 101}]})
    assert r.status_code == 422
    got = {(d["index"], d["field"], d["rule"]) for d in r.json()["details"]}
    assert got == {(1, "absences", "missing"), (2, "attendance_pct", "less_than_equal")}
    r = client.post("/predict", json={**rec, "shoe_size": 42})
    assert r.status_code == 422 and r.json()["details"][0]["rule"] == "extra_forbidden"
    r = client.post("/predict", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["details"][0]["rule"] == "json_invalid"
    r = client.post("/predict", json={"records": []})
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "records"
    r = client.post("/predict", json=[rec])
    assert r.status_code == 422


def test_unseen_category_predicted_and_counted(client: TestClient, fitted: exports.Fitted) -> None:
    r = client.post("/predict", json={**fitted.records[0], "school_type": "online"})
    assert r.status_code == 200
    assert 'inference_unseen_categories_total{feature="school_type"} 1.0' in client.get("/metrics").text


def test_model_health_metrics_docs(client: TestClient, fitted: exports.Fitted) -> None:
    client.post("/predict", json=fitted.records[0])
    m = client.get("/model").json()
    assert m["version"] == 1 and m["metrics"] == {"rmse": 2.0}
    assert set(m["schema"]["properties"]) == {f["name"] for f in m["features"]}
    assert m["last_reload_attempt"]["ok"] is True and m["loaded_at"]
    assert m["prediction_log"]["dropped"] == 0
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model_version"] == 1 and h["log_dropped"] == 0
    assert client.get("/ready").status_code == 200
    text = client.get("/metrics").text
    for needle in (
        'inference_requests_total{arm="champion",method="POST",model_version="1",route="/predict",status="200"}',
        'inference_predictions_total{arm="champion",model_version="1"} 1.0',
        "inference_request_latency_seconds_bucket",
        'inference_model_reloads_total{result="loaded"}',
        "inference_log_queue_depth",
        "inference_log_dropped_total 0.0",
    ):
        assert needle in text, needle
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    example = body["examples"]["one record"]["value"]
    assert set(example) == set(m["schema"]["properties"])
    assert client.post("/predict", json=example).status_code == 200
    assert client.get("/docs").status_code == 200


def test_no_export_then_ready(
    tmp_path: Path, fitted: exports.Fitted, make_settings: Callable[..., Any]
) -> None:
    d = tmp_path / "empty-models"
    with TestClient(create_app(make_settings(d))) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["error_code"] == "MODEL_NOT_LOADED"
        r = c.post("/predict", json=fitted.records[0])
        assert r.status_code == 503 and "no model is loaded" in r.json()["message"]
        assert c.get("/health").json()["model_loaded"] is False
        exports.republish(d, fitted.exports["ridge"], 4)
        wait_for(lambda: c.get("/ready").status_code == 200)
        r = c.post("/predict", json=fitted.records[0])
        assert r.status_code == 200 and r.json()["model_version"] == 4


def test_hot_reload_and_corrupt_refused(client: TestClient, model_dir: Path, fitted: exports.Fitted) -> None:
    exports.republish(model_dir, fitted.exports["ridge"], 2)
    wait_for(lambda: client.post("/predict", json=fitted.records[0]).json()["model_version"] == 2)
    exports.publish_corrupt(model_dir, fitted.exports["rf"], 3, how="sha")
    m = wait_for(
        lambda: (lambda j: j if j["last_reload_attempt"]["version"] == 3 else None)(
            client.get("/model").json()
        )
    )
    assert m["version"] == 2 and m["last_reload_attempt"]["ok"] is False
    assert "sha256" in m["last_reload_attempt"]["error"]
    r = client.post("/predict", json=fitted.records[0])
    assert r.status_code == 200 and r.json()["model_version"] == 2
    assert 'inference_model_reloads_total{result="refused"} 1.0' in client.get("/metrics").text


def test_feedback_joins_and_paging(client: TestClient, fitted: exports.Fitted) -> None:
    ids = [
        p["request_id"]
        for p in client.post("/predict", json={"records": fitted.records[:25]}).json()["predictions"]
    ]
    fb = client.post(
        "/feedback",
        json={"items": [{"request_id": ids[i], "actual": float(i)} for i in range(0, 25, 5)]},
        headers=LABELLER,
    )
    assert fb.status_code == 200
    assert fb.json() == {"accepted": 5, "unknown_request_ids": [], "overwritten_request_ids": []}
    fb = client.post(
        "/feedback",
        json={
            "items": [{"request_id": ids[0], "actual": 7.5}, {"request_id": "x", "actual": 1}],
            "overwrite": True,
        },
        headers=LABELLER,
    )
    assert fb.json() == {"accepted": 1, "unknown_request_ids": ["x"], "overwritten_request_ids": [ids[0]]}
    seen: list[dict[str, Any]] = []
    since = None
    while True:
        params: dict[str, Any] = {"limit": 10}
        if since is not None:
            params["since_id"] = since
        page = client.get("/predictions", params=params).json()
        seen += page["items"]
        since = page["next_since_id"]
        if since is None:
            break
    assert [s["request_id"] for s in seen] == ids
    assert [s["id"] for s in seen] == sorted(s["id"] for s in seen)
    assert seen[3]["features"] == fitted.records[3] and seen[3]["model_version"] == 1
    labelled = client.get("/predictions", params={"labelled": "true"}).json()["items"]
    assert {r["request_id"]: r["actual"] for r in labelled} == {
        ids[0]: 7.5,
        ids[5]: 5.0,
        ids[10]: 10.0,
        ids[15]: 15.0,
        ids[20]: 20.0,
    }
    unlabelled = client.get("/predictions", params={"labelled": "false"}).json()["items"]
    assert len(unlabelled) == 20 and all(r["actual"] is None for r in unlabelled)
    ts = seen[10]["ts"]
    assert client.get("/predictions", params={"since": ts}).json()["items"][0]["id"] <= seen[10]["id"]
    assert client.get("/predictions", params={"limit": 0}).status_code == 422


def test_feedback_for_rows_still_queued(
    model_dir: Path, make_settings: Callable[..., Any], fitted: exports.Fitted
) -> None:
    # the writer waits up to 60 s before writing: the rows are still in the queue when feedback arrives
    s = make_settings(model_dir, log_flush_interval=60, log_batch_size=10_000)
    with TestClient(create_app(s)) as c:
        wait_for(lambda: c.app.state.svc.log.store.ready.is_set())
        rid = c.post("/predict", json=fitted.records[0]).json()["predictions"][0]["request_id"]
        assert c.get("/health").json()["log_queue_depth"] == 1
        assert (
            c.post(
                "/feedback", json={"items": [{"request_id": rid, "actual": 3.0}]}, headers=LABELLER
            ).json()["accepted"]
            == 1
        )
        rows = c.get("/predictions", params={"labelled": "true"}).json()["items"]
        assert [(r["request_id"], r["actual"]) for r in rows] == [(rid, 3.0)]


def test_database_down_drops_are_counted(
    model_dir: Path, make_settings: Callable[..., Any], fitted: exports.Fitted
) -> None:
    from gradeflow_testkit.servers import free_port

    url = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nothing?connect_timeout=1"
    s = make_settings(model_dir, prediction_db_url=url, log_queue_max=30, log_shutdown_timeout=0.5)
    with TestClient(create_app(s)) as c:
        for _ in range(5):
            assert c.post("/predict", json={"records": fitted.records[:10]}).status_code == 200
        # the writer thread reports the error once its first connection attempt has failed
        h = wait_for(lambda: (lambda j: j if j["log_db_error"] else None)(c.get("/health").json()))
        assert h["log_queue_depth"] == 30 and h["log_dropped"] == 20 and h["log_db_error"]
        assert c.get("/model").json()["prediction_log"]["dropped"] == 20
        assert "inference_log_dropped_total 20.0" in c.get("/metrics").text
        assert c.get("/predictions").status_code == 503


def test_logging_off(model_dir: Path, make_settings: Callable[..., Any], fitted: exports.Fitted) -> None:
    with TestClient(create_app(make_settings(model_dir, inference_log_enabled=False))) as c:
        assert c.post("/predict", json=fitted.records[0]).status_code == 200
        assert c.get("/predictions").json()["items"] == []
