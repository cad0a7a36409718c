"""Predicting by student id and ingesting readings, against a real Feast store (SQLite online store).

The thin online reader is checked against Feast's own ``get_online_features``; the API in-process
(TestClient, real lifespan, real export, real SQLite, real Feast push and materialization).
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gradeflow_inference.app import create_app
from gradeflow_inference.online.reader import ABSENT, SqliteOnline, StudentRow
from gradeflow_testkit import exports
from gradeflow_testkit.feature_store import SeededStore, reading_time, seeded_store

from .conftest import ADMIN_TOKEN
from .test_api import wait_for as _wait

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ACTIVITY = ("study_hours_per_week", "attendance_pct", "absences", "sleep_hours", "tutoring_sessions")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> SeededStore:
    s = seeded_store(tmp_path_factory.mktemp("feature-store"), students=60)
    full = s.online(["S-00001"]).iloc[0].to_dict()
    # a student whose activity readings are 60 days old (the view's time to live is 35 days)
    s.push([{**full, "student_id": "OLD-1", "event_timestamp": reading_time(60)}])
    # a student with a profile and no activity reading at all
    profile = {k: full[k] for k in ("age", "school_type", "parental_education", "family_support")}
    profile.update({k: full[k] for k in ("internet_access", "extracurricular", "motivation")})
    profile.update({k: full[k] for k in ("previous_grade", "commute_minutes")})
    s.push([{**profile, "student_id": "NEW-1", "event_timestamp": reading_time(1)}])
    return s


@pytest.fixture
def client(seeded: SeededStore, model_dir: Path, make_settings: Callable[..., Any]) -> Iterator[TestClient]:
    cfg = make_settings(model_dir, feature_store_dir=seeded.settings.feature_store_path)
    with TestClient(create_app(cfg)) as c:
        yield c


def _record(seeded: SeededStore, sid: str, features: list[str]) -> dict[str, Any]:
    row = seeded.online([sid]).iloc[0].to_dict()
    return {f: (None if isinstance(row[f], float) and math.isnan(row[f]) else row[f]) for f in features}


def test_reader_agrees_with_feast(seeded: SeededStore) -> None:
    ids = [*seeded.ids[:25], "OLD-1", "NEW-1"]
    feast = seeded.online(ids).to_dict(orient="records")
    rows = SqliteOnline(seeded.settings.feature_store_path).get([*ids, "nobody"])
    assert rows[-1] is None
    compared = 0
    for want, got in zip(feast, rows, strict=False):
        assert got is not None
        for feat, v in want.items():
            if feat == "student_id":
                continue
            mine = got.values.get(feat, got.expired.get(feat, "absent"))
            if isinstance(v, float) and math.isnan(v):
                assert mine == "absent", (want["student_id"], feat)
            elif feat in got.expired:
                assert feat in ACTIVITY + ("term_grade",) and want["student_id"] == "OLD-1"
            else:
                assert mine == v, (want["student_id"], feat, v, mine)
            compared += 1
    assert compared > 25 * 15
    assert set(rows[25].expired) == {*ACTIVITY, "term_grade"}  # OLD-1: activity past its TTL


@pytest.mark.parametrize("cache", [200_000, 0], ids=["cached", "uncached"])
def test_lookup_is_get_in_the_model_s_order(seeded: SeededStore, cache: int) -> None:
    """The predict path's fast form: a tuple of the requested features for a student with all of them
    stored and fresh (in the order asked, a feature no view has included), else the StudentRow that
    says why (expired, missing), None for an unknown student; the same values as ``get`` (checked
    against Feast above)."""
    reader = SqliteOnline(seeded.settings.feature_store_path, cache_max=cache)
    layout = reader.layout()
    assert layout is not None
    features = tuple(reversed(layout.feature_view))  # another order than the store's
    ids = [*seeded.ids[:30], "OLD-1", "NEW-1", "nobody", seeded.ids[0]]
    for _ in range(2):  # the second time from the cache (when on) and the decoded-value memo
        found = reader.lookup(ids, features)
        rows = reader.get(ids)
        for sid, got, row in zip(ids[:30], found, rows, strict=False):
            assert type(got) is tuple and row is not None, sid
            assert got == tuple(row.values[f] for f in features), sid
        assert isinstance(found[30], StudentRow) and set(found[30].expired) == {*ACTIVITY, "term_grade"}
        assert isinstance(found[31], StudentRow) and not found[31].expired
        assert not set(ACTIVITY) & set(found[31].values) and "age" in found[31].values
        assert found[32] is None and found[33] == found[0]
    # only the profile's features: OLD-1's expired activity does not matter, NEW-1 has them all
    profile = ("age", "school_type", "previous_grade")
    old, new = reader.lookup(["OLD-1", "NEW-1"], profile)
    assert type(old) is tuple and type(new) is tuple and len(old) == 3
    # a feature no view has: the row says it is missing
    (row,) = reader.lookup([seeded.ids[0]], ("age", "shoe_size"))
    assert isinstance(row, StudentRow) and "shoe_size" not in row.values and "age" in row.values
    reader.close()


def test_decoded_value_memo_is_exact_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradeflow_inference.online import reader as reader_module
    from gradeflow_inference.online.wire import decode_value

    memo = reader_module._Memo(decode_value)
    bufs = [b"\x29" + struct.pack("<d", x / 7) for x in range(50)] + [b"\x12\x03abc", b"", b"\x20\x05"]
    assert [memo[b] for b in bufs] == [decode_value(b) for b in bufs]
    assert memo[None] is ABSENT
    monkeypatch.setattr(reader_module, "MEMO_MAX", 10)
    small = reader_module._Memo(decode_value)
    assert [small[b] for b in bufs] == [decode_value(b) for b in bufs]
    assert len(small) <= 11 and small[None] is ABSENT  # emptied when full, None kept


def test_predict_by_id_equals_sending_the_stored_features(
    client: TestClient, seeded: SeededStore, fitted: exports.Fitted
) -> None:
    features = list(fitted.records[0])
    sid = seeded.ids[3]
    full = _record(seeded, sid, features)
    sent = client.post("/predict", json=full).json()["predictions"][0]["prediction"]
    r = client.post("/predict", json={"student_id": sid})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["prediction"] == pytest.approx(sent, abs=1e-6)
    # batches of ids, mixed with full records, and the compact form give the same answers
    r = client.post("/predict", json={"records": [{"student_id": sid}, full]})
    assert [p["prediction"] for p in r.json()["predictions"]] == pytest.approx([sent, sent], abs=1e-6)
    r = client.post("/predict", json={"student_ids": seeded.ids[:40]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 40
    assert r.json()["predictions"][3]["prediction"] == pytest.approx(sent, abs=1e-6)


def test_sent_features_override_stored_and_are_logged(
    client: TestClient, seeded: SeededStore, fitted: exports.Fitted
) -> None:
    sid = seeded.ids[5]
    full = _record(seeded, sid, list(fitted.records[0]))
    changed = {**full, "attendance_pct": 20.0, "study_hours_per_week": 0.0}
    want = client.post("/predict", json=changed).json()["predictions"][0]["prediction"]
    r = client.post("/predict", json={"student_id": sid, "attendance_pct": 20.0, "study_hours_per_week": 0.0})
    assert r.status_code == 200, r.text
    rid = r.json()["predictions"][0]["request_id"]
    assert r.json()["predictions"][0]["prediction"] == pytest.approx(want, abs=1e-6)

    def logged() -> dict[str, Any] | None:
        items = client.get("/predictions", params={"limit": 100}).json()["items"]
        return next((i for i in items if i["request_id"] == rid), None)

    row = _wait(logged)
    assert row["features"] == changed  # the values used: stored ones plus the overrides, no student_id


def test_unknown_student_is_404_naming_the_id(client: TestClient, seeded: SeededStore) -> None:
    r = client.post("/predict", json={"student_id": "S-99999"})
    assert r.status_code == 404
    assert r.json()["error_code"] == "UNKNOWN_STUDENT" and "S-99999" in r.json()["message"]
    r = client.post("/predict", json={"student_ids": [seeded.ids[0], "ghost-1", "ghost-2"]})
    assert r.status_code == 404
    assert [(d["index"], d["value"]) for d in r.json()["details"]] == [(1, "ghost-1"), (2, "ghost-2")]


def test_expired_or_missing_features_are_422_naming_them(client: TestClient) -> None:
    r = client.post("/predict", json={"student_id": "OLD-1"})
    assert r.status_code == 422
    details = r.json()["details"]
    assert {d["field"] for d in details} == set(ACTIVITY) and {d["rule"] for d in details} == {
        "feature_expired"
    }
    assert "OLD-1" in r.json()["message"]
    r = client.post("/predict", json={"student_id": "NEW-1"})
    assert r.status_code == 422
    assert {(d["field"], d["rule"]) for d in r.json()["details"]} == {
        (f, "feature_missing") for f in ACTIVITY
    }
    # sending what is missing makes the prediction possible
    sent = {"study_hours_per_week": 5.0, "attendance_pct": 90.0, "absences": 2, "sleep_hours": 7.0}
    r = client.post("/predict", json={"student_id": "NEW-1", **sent, "tutoring_sessions": 1})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({"student_id": 7}, "student_id", "type"),
        ({"student_id": ""}, "student_id", "type"),
        ({"student_id": "x" * 129}, "student_id", "type"),
        ({"student_ids": "S-00001"}, "student_ids", "list_type"),
        ({"student_ids": []}, "student_ids", "too_short"),
        ({"student_ids": ["S-00001"] * 10_001}, "student_ids", "too_long"),
        ({"student_ids": ["S-00001"], "age": 3}, "age", "extra_forbidden"),
        ({"student_id": "S-00001", "age": 99}, "age", "less_than_equal"),
        ({"student_id": "S-00001", "shoe_size": 42}, "shoe_size", "extra_forbidden"),
    ],
)
def test_bad_by_id_requests_are_422_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str, rule: str
) -> None:
    r = client.post("/predict", json=body)
    assert r.status_code == 422, r.text
    assert (r.json()["details"][0]["field"], r.json()["details"][0]["rule"]) == (field, rule)


def _metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not on /metrics")


def test_openapi_documents_the_readings_of_the_applied_store(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    reading = spec["components"]["schemas"]["Reading"]
    assert reading["additionalProperties"] is False and reading["minProperties"] == 3
    assert reading["required"] == ["student_id", "event_timestamp"]
    assert "term_grade" in reading["properties"]  # a stored feature the serving model does not use
    att = reading["properties"]["attendance_pct"]
    assert [(s.get("minimum"), s.get("maximum")) for s in att["anyOf"] if s["type"] == "number"] == [(0, 100)]
    assert spec["components"]["schemas"]["ReadingsRequest"]["properties"]["readings"]["maxItems"] == 10_000


def test_readings_need_the_admin_token(client: TestClient) -> None:
    body = {"readings": [{"student_id": "S-00001", "event_timestamp": reading_time(0), "absences": 3}]}
    assert client.post("/readings", json=body).status_code == 401
    assert client.post("/readings", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/features/materialize").status_code == 401


def test_bad_readings_are_refused_whole_naming_field_and_index(client: TestClient) -> None:
    before = _metric(client, "inference_feature_readings_accepted_total")
    now = reading_time(0)
    good = {"student_id": "S-00009", "event_timestamp": now, "absences": 4}
    r = client.post(
        "/readings",
        json={
            "readings": [
                good,
                {"student_id": "S-00009", "event_timestamp": now, "attendance_pct": 140},
                {"student_id": "S-00009", "event_timestamp": "yesterday", "absences": 1},
                {"event_timestamp": now, "absences": 1},
                {"student_id": "S-00009", "event_timestamp": now, "hair_colour": "red"},
                {"student_id": "S-00009", "event_timestamp": now},
                {"student_id": "S-00009", "event_timestamp": reading_time(-3), "absences": 1},  # 409 later
                {"student_id": "S-00009", "event_timestamp": now, "school_type": "x" * 500},
            ]
        },
        headers=ADMIN,
    )
    assert r.status_code == 422, r.text
    got = {(d["index"], d["field"], d["rule"]) for d in r.json()["details"]}
    assert got == {
        (1, "attendance_pct", "less_than_equal"),
        (2, "event_timestamp", "datetime"),
        (3, "student_id", "missing"),
        (4, "hair_colour", "extra_forbidden"),
        (5, "", "too_short"),
        (7, "school_type", "string_too_long"),
    }
    assert _metric(client, "inference_feature_readings_accepted_total") == before  # nothing half accepted
    # dated ahead of the clock (it would shadow every real reading until then): 409 naming the field
    future = {"student_id": "S-00009", "event_timestamp": reading_time(-3), "absences": 1}
    r = client.post("/readings", json={"readings": [good, future]}, headers=ADMIN)
    assert r.status_code == 409 and r.json()["error_code"] == "READING_FROM_THE_FUTURE"
    assert r.json()["details"][0]["index"] == 1 and r.json()["details"][0]["field"] == "event_timestamp"
    assert _metric(client, "inference_feature_readings_accepted_total") == before
    r = client.post("/readings", json={"readings": [good] * 10_001}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["details"][0] == {
        "field": "readings",
        "rule": "too_long",
        "message": "at most 10000",
    }


def test_readings_reach_predictions_and_the_lag_metric_moves(client: TestClient, seeded: SeededStore) -> None:
    sid = seeded.ids[7]
    before = client.post("/predict", json={"student_id": sid}).json()["predictions"][0]["prediction"]
    assert _metric(client, "inference_feature_ingest_lag_seconds") == 0.0
    # a bad week: attendance collapses, study stops (the other activity values are carried forward)
    reading = {
        "student_id": sid,
        "event_timestamp": reading_time(0),
        "attendance_pct": 15.0,
        "study_hours_per_week": 0.0,
    }
    r = client.post("/readings", json={"readings": [reading]}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1

    def changed() -> float | None:
        p = client.post("/predict", json={"student_id": sid}).json()["predictions"][0]["prediction"]
        return p if abs(p - before) > 1e-6 else None

    after = _wait(changed, timeout=60)
    assert after < before  # less attendance and study: a lower predicted grade
    assert _metric(client, "inference_feature_readings_pending") == 0.0
    assert _metric(client, "inference_feature_ingest_lag_seconds") == 0.0
    assert _metric(client, "inference_feature_readings_pushed_total") >= 1
    row = SqliteOnline(seeded.settings.feature_store_path).get([sid])[0]
    assert row is not None and row.values["attendance_pct"] == 15.0 and row.values["absences"] is not None
    # on demand: queued at once (202), counted when done
    r = client.post("/features/materialize", headers=ADMIN)
    assert r.status_code == 202 and r.json()["queued"] is True, r.text
    _wait(lambda: _metric(client, 'inference_feature_materializations_total{result="ok"}') >= 1, timeout=120)
    assert _metric(client, "inference_feature_materialized_timestamp_seconds") > time.time() - 120


def predict_with_readings_out_of_order(client: TestClient, sid: str) -> None:
    """A newer reading, then an older one arriving after it: the by-id prediction keeps using the newer.

    Shared by the SQLite (here) and Redis (test_by_id_redis) tests."""

    def predict() -> float:
        r = client.post("/predict", json={"student_id": sid})
        assert r.status_code == 200, r.text
        return float(r.json()["predictions"][0]["prediction"])

    def post_and_wait(reading: dict[str, Any]) -> None:
        pushed = _metric(client, "inference_feature_readings_pushed_total")
        r = client.post("/readings", json={"readings": [reading]}, headers=ADMIN)
        assert r.status_code == 200, r.text
        _wait(lambda: _metric(client, "inference_feature_readings_pushed_total") >= pushed + 1, timeout=60)

    newer = {"student_id": sid, "event_timestamp": reading_time(1), "attendance_pct": 12.0}
    newer.update(study_hours_per_week=0.5, absences=30, tutoring_sessions=0)
    older = {"student_id": sid, "event_timestamp": reading_time(3), "attendance_pct": 99.0}
    older.update(study_hours_per_week=30.0, absences=0, tutoring_sessions=8)
    post_and_wait(older)
    p_older = predict()
    post_and_wait(newer)
    p_newer = predict()
    assert abs(p_newer - p_older) > 0.1  # the two readings lead to different predictions
    post_and_wait(older)  # the older reading again, arriving last
    assert predict() == pytest.approx(p_newer, abs=1e-9)


def test_a_late_reading_does_not_change_the_prediction_by_id(client: TestClient, seeded: SeededStore) -> None:
    sid = seeded.ids[13]
    predict_with_readings_out_of_order(client, sid)
    row = SqliteOnline(seeded.settings.feature_store_path).get([sid])[0]
    assert row is not None and row.values["attendance_pct"] == 12.0 and row.values["absences"] == 30


def test_lag_gauge_counts_waiting_readings_until_pushed(seeded: SeededStore, tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from gradeflow_inference.metrics import Metrics
    from gradeflow_inference.online.journal import ReadingJournal
    from gradeflow_inference.online.materializer import Materializer

    journal = ReadingJournal(tmp_path / "readings.db")
    mat = Materializer(seeded.settings, journal, interval=0)  # not started: nothing pushes on its own
    metrics = Metrics(dict, mat.stats)

    def gauge(name: str) -> float:
        for line in generate_latest(metrics.registry).decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split(" ")[1])
        raise AssertionError(name)

    assert gauge("inference_feature_ingest_lag_seconds") == 0.0
    journal.add([{"student_id": seeded.ids[11], "event_timestamp": reading_time(0), "absences": 9}])
    time.sleep(1.2)
    assert gauge("inference_feature_readings_pending") == 1.0
    assert gauge("inference_feature_ingest_lag_seconds") >= 1.0
    assert gauge("inference_feature_materialized_timestamp_seconds") == 0.0
    assert mat.push_now().result(timeout=120) == 1
    assert gauge("inference_feature_readings_pending") == 0.0
    assert gauge("inference_feature_ingest_lag_seconds") == 0.0
    assert gauge("inference_feature_materialized_timestamp_seconds") == 0.0  # a push is not a materialization
    assert mat.materialize_now().result(timeout=120)["seconds"] > 0
    assert gauge("inference_feature_materialized_timestamp_seconds") > time.time() - 120
    row = SqliteOnline(seeded.settings.feature_store_path).get([seeded.ids[11]])[0]
    assert row is not None and row.values["absences"] == 9
    mat.stop()
    journal.close()


def test_a_canary_keeps_each_student_on_one_model_when_predicting_by_id(
    client: TestClient, seeded: SeededStore, model_dir: Path, fitted: exports.Fitted
) -> None:
    """The canary's sticky key is the student_id the client sent, also when the store filled the record in."""
    from gradeflow_shared import rollout as ro

    from .test_rollout import _start

    _start(model_dir, fitted, "canary", canary=0.5)
    _wait(lambda: (client.get("/rollout").json()["rollout"] or {}).get("stage") == "canary", 20)
    ids = seeded.ids[:30]
    for _ in range(2):  # twice: the same student lands on the same model
        for sid in ids:
            v = client.post("/predict", json={"student_id": sid}).json()["model_version"]
            assert (v == 2) == ro.to_candidate(f"s:{sid}", 0.5), (sid, v)
    assert {ro.to_candidate(f"s:{sid}", 0.5) for sid in ids} == {True, False}  # both arms were exercised
