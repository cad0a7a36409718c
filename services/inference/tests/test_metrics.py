"""/metrics per model version: requests, errors, latency, predicted records and the live MAE from /feedback
(the real app in-process, real exports, real SQLite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from gradeflow_testkit import exports
from gradeflow_testkit.prom import samples, value

from .conftest import LABELLER
from .test_api import wait_for

V1 = {"model_version": "1", "arm": "champion"}


def test_predict_requests_errors_latency_and_records_by_version(
    client: TestClient, fitted: exports.Fitted
) -> None:
    assert client.post("/predict", json=fitted.records[0]).status_code == 200
    assert client.post("/predict", json={"records": fitted.records[:3]}).status_code == 200
    assert client.post("/predict", json={**fitted.records[0], "age": "old"}).status_code == 422
    client.get("/health")
    text = client.get("/metrics").text
    ok = {"route": "/predict", "status": "200", **V1}
    assert value(text, "inference_requests_total", method="POST", **ok) == 2
    assert value(text, "inference_request_latency_seconds_count", **ok) == 2
    assert value(text, "inference_predictions_total", **V1) == 4
    bad = {"route": "/predict", **V1}
    assert value(text, "inference_requests_total", status="422", **bad) == 1
    assert value(text, "inference_request_errors_total", **{"class": "4xx"}, **bad) == 1
    assert value(text, "inference_request_errors_total", **{"class": "5xx"}, **bad) is None
    # routes no model answers carry no version
    assert value(text, "inference_requests_total", route="/health", model_version="") == 1
    assert not [
        lab for lab, _ in samples(text, "inference_request_errors_total") if lab["route"] == "/health"
    ]


def test_no_model_is_a_5xx_without_version(
    tmp_path: Path, fitted: exports.Fitted, make_settings: Any
) -> None:
    from gradeflow_inference.app import create_app

    with TestClient(create_app(make_settings(tmp_path / "empty"))) as c:
        assert c.post("/predict", json=fitted.records[0]).status_code == 503
        text = c.get("/metrics").text
    assert (
        value(text, "inference_request_errors_total", route="/predict", model_version="", **{"class": "5xx"})
        == 1
    )


def test_hostile_method_and_path_do_not_become_labels(client: TestClient) -> None:
    for i in range(5):
        client.request("BREW", f"/predict/x{i}?q={i}")
    text = client.get("/metrics").text
    routes = {lab["route"] for lab, _ in samples(text, "inference_requests_total")}
    methods = {lab["method"] for lab, _ in samples(text, "inference_requests_total")}
    assert routes <= {"other", "/metrics"} and "other" in routes
    assert methods <= {"other", "GET"}
    assert value(text, "inference_requests_total", route="other", method="other", status="404") == 5


def _predict(client: TestClient, records: list[dict[str, Any]]) -> tuple[int, list[str], list[float]]:
    body = client.post("/predict", json={"records": records}).json()
    items = body["predictions"]
    return body["model_version"], [i["request_id"] for i in items], [i["prediction"] for i in items]


def test_live_mae_per_version_from_feedback(
    client: TestClient, fitted: exports.Fitted, model_dir: Path
) -> None:
    v, ids1, preds1 = _predict(client, fitted.records[:4])
    assert v == 1
    exports.republish(model_dir, fitted.exports["ridge"], 2)  # hot reload: version 2 answers from now
    wait_for(lambda: client.get("/model").json()["version"] == 2)
    v, ids2, preds2 = _predict(client, fitted.records[4:6])
    assert v == 2
    actual1 = [10.0, 12.0, 8.0, 15.0]
    actual2 = [11.0, 9.0]
    items = [{"request_id": r, "actual": a} for r, a in zip(ids1 + ids2, actual1 + actual2, strict=True)]
    items.append({"request_id": "f" * 32, "actual": 3.0})  # unknown: not counted
    r = client.post("/feedback", json={"items": items}, headers=LABELLER)
    assert r.status_code == 200 and r.json()["accepted"] == 6
    text = client.get("/metrics").text
    for version, preds, actual in (("1", preds1, actual1), ("2", preds2, actual2)):
        errs = [abs(p - a) for p, a in zip(preds, actual, strict=True)]
        lab = {"model_version": version, "arm": "champion"}
        assert value(text, "inference_live_abs_error_count", **lab) == len(errs)
        assert abs(value(text, "inference_live_abs_error_sum", **lab) - sum(errs)) < 1e-3  # type: ignore[operator]
        assert abs(value(text, "inference_live_mae", **lab) - sum(errs) / len(errs)) < 1e-3  # type: ignore[operator]
    # a corrected label replaces the stored one but is not counted a second time
    r = client.post(
        "/feedback",
        json={"items": [{"request_id": ids1[0], "actual": 0.0}], "overwrite": True},
        headers=LABELLER,
    )
    assert r.status_code == 200
    text = client.get("/metrics").text
    assert value(text, "inference_live_abs_error_count", model_version="1") == 4


def test_a_label_is_stored_even_when_its_error_cannot_be_computed(
    client: TestClient, fitted: exports.Fitted
) -> None:
    """The metric is updated after the commit: a stored prediction that cannot be read back (here its
    predictions cut short) costs the metric, never the label or a 5xx."""
    import sqlite3

    _, ids, _ = _predict(client, fitted.records[:2])
    client.get("/predictions")  # written
    db = client.app.state.svc.settings.db_url().removeprefix("sqlite:///")  # type: ignore[attr-defined]
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE prediction_batches SET predictions = '[]'")
    r = client.post("/feedback", json={"items": [{"request_id": ids[1], "actual": 9.0}]}, headers=LABELLER)
    assert r.status_code == 200 and r.json()["accepted"] == 1
    again = client.post(
        "/feedback", json={"items": [{"request_id": ids[1], "actual": 9.0}]}, headers=LABELLER
    )
    assert again.status_code == 409  # the first label was stored
    assert value(client.get("/metrics").text, "inference_live_abs_error_count", model_version="1") is None
