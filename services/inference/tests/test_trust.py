"""The trust boundary over HTTP: labels need a token and are checked strictly, inputs are bounded, and no
input gets a 5xx (in-process, real lifespan, real exports, real SQLite). Each test names what it guards."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from gradeflow_inference.app import create_app
from gradeflow_shared.errors import ConfigError
from gradeflow_testkit import exports

from .conftest import ADMIN_TOKEN, LABELLER, LABELLER_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JSON = {"Content-Type": "application/json"}


def _ids(c: TestClient, records: list[dict[str, Any]]) -> list[str]:
    r = c.post("/predict", json={"records": records})
    assert r.status_code == 200, r.text
    return [p["request_id"] for p in r.json()["predictions"]]


def _feedback(c: TestClient, body: Any, headers: dict[str, str] | None = None) -> Any:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return c.post("/feedback", content=raw, headers={**JSON, **(LABELLER if headers is None else headers)})


def _db(c: TestClient) -> sa.Engine:
    """The service's own engine, once its database is open and every queued row is written."""
    return c.app.state.svc.log.flushed_store(ready_timeout=30).require()  # type: ignore[attr-defined,no-any-return]


# ------------------------------------------------------------------ labels are privileged input
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": f"Basic {LABELLER_TOKEN}"}],
)
def test_feedback_needs_a_token(client: TestClient, fitted: exports.Fitted, headers: dict[str, str]) -> None:
    ids = _ids(client, fitted.records[:2])
    r = _feedback(client, {"items": [{"request_id": ids[0], "actual": 3.0}]}, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error_code"] == "UNAUTHORIZED" and "LABELLER_TOKEN" in r.json()["message"]
    assert _feedback(client, b"{not json", headers=headers).status_code == 401  # auth before parsing
    with _db(client).connect() as conn:
        assert conn.execute(sa.text("select count(*) from feedback")).scalar() == 0


def test_labeller_and_admin_tokens_label(client: TestClient, fitted: exports.Fitted) -> None:
    ids = _ids(client, fitted.records[:2])
    assert _feedback(client, {"items": [{"request_id": ids[0], "actual": 3.0}]}).json()["accepted"] == 1
    r = _feedback(client, {"items": [{"request_id": ids[1], "actual": 4.0}]}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["accepted"] == 1


def test_labeller_role_off_then_only_admin_labels(
    model_dir: Path, make_settings: Callable[..., Any], fitted: exports.Fitted
) -> None:
    with TestClient(create_app(make_settings(model_dir, labeller_token=""))) as c:
        ids = _ids(c, fitted.records[:1])
        assert _feedback(c, {"items": [{"request_id": ids[0], "actual": 3.0}]}).status_code == 401
        assert _feedback(c, {"items": [{"request_id": ids[0], "actual": 3.0}]}, ADMIN).status_code == 200


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"admin_token": ""}, "ADMIN_TOKEN"),
        ({"admin_token": "change-me"}, "ADMIN_TOKEN"),
        ({"admin_token": "short"}, "ADMIN_TOKEN"),
        ({"labeller_token": "token"}, "LABELLER_TOKEN"),
        ({"labeller_token": "too-short"}, "LABELLER_TOKEN"),
    ],
)
def test_refuses_to_start_with_a_weak_token(
    model_dir: Path, make_settings: Callable[..., Any], kw: dict[str, str], name: str
) -> None:
    with pytest.raises(ConfigError, match=name):
        create_app(make_settings(model_dir, **kw))


@pytest.mark.parametrize(
    ("actual", "rule"),
    [
        (b"NaN", "json_invalid"),  # a JSON extension Python's parser accepts
        (b"Infinity", "json_invalid"),
        (b"-Infinity", "json_invalid"),
        (b"1e999", "json_invalid"),  # infinity when parsed
        (b'"12.5"', "float_type"),
        (b"true", "float_type"),
        (b"null", "float_type"),
        (b"[12.5]", "float_type"),
        (b"1e308", "less_than_equal"),
        (b"20.5", "less_than_equal"),  # above the manifest's target_max (20)
        (b"-0.5", "greater_than_equal"),  # below its target_min (0)
    ],
)
def test_label_must_be_a_finite_number_in_bounds(
    client: TestClient, fitted: exports.Fitted, actual: bytes, rule: str
) -> None:
    ids = _ids(client, fitted.records[:4])
    items = b",".join(b'{"request_id": "%s", "actual": 10}' % i.encode() for i in ids[:3])
    body = b'{"items": [%s, {"request_id": "%s", "actual": %s}]}' % (items, ids[3].encode(), actual)
    r = _feedback(client, body)
    assert r.status_code == 422, r.text
    fields = {d["field"] for d in r.json()["details"]}
    assert fields <= {"items[3].actual", "items[3]", ""} and (
        rule == "json_invalid" or "items[3].actual" in fields
    )
    if rule != "json_invalid":
        assert rule in {d["rule"] for d in r.json()["details"]}
    with _db(client).connect() as conn:  # nothing of the request was stored
        assert conn.execute(sa.text("select count(*) from feedback")).scalar() == 0


def test_label_bounds_edges_and_integers_accepted(client: TestClient, fitted: exports.Fitted) -> None:
    ids = _ids(client, fitted.records[:3])
    body = {"items": [{"request_id": ids[0], "actual": 0}, {"request_id": ids[1], "actual": 20.0},
                      {"request_id": ids[2], "actual": 12}]}  # fmt: skip
    assert _feedback(client, body).json()["accepted"] == 3


@pytest.mark.parametrize(
    "body",
    [
        {"items": []},
        {"items": [{"request_id": "", "actual": 1.0}]},
        {"items": [{"request_id": "x" * 65, "actual": 1.0}]},
        {"items": [{"request_id": 12, "actual": 1.0}]},
        {"items": [{"request_id": "a", "actual": 1.0, "extra": 1}]},
        {"items": [{"request_id": "a", "actual": 1.0}], "overwrite": "yes"},
        {"items": [{"request_id": "a", "actual": 1.0}], "x" * 10_000: 1},
        {"items": "nope"},
        [1, 2],
    ],
)
def test_feedback_body_refused_with_422(client: TestClient, body: Any) -> None:
    r = _feedback(client, body)
    assert r.status_code == 422, r.text
    assert all(len(d["field"]) <= 80 for d in r.json()["details"])  # unknown keys echoed truncated


def test_feedback_same_request_id_twice_in_one_request(client: TestClient, fitted: exports.Fitted) -> None:
    ids = _ids(client, fitted.records[:1])
    r = _feedback(
        client, {"items": [{"request_id": ids[0], "actual": 1.0}, {"request_id": ids[0], "actual": 2.0}]}
    )
    assert r.status_code == 409 and r.json()["details"][0]["field"] == "items[1].request_id", r.text


def test_unknown_request_ids_reported_not_stored(client: TestClient, fitted: exports.Fitted) -> None:
    ids = _ids(client, fitted.records[:1])
    unknown = ["f" * 32, "no-such-id"]
    body = {
        "items": [{"request_id": ids[0], "actual": 5.0}] + [{"request_id": u, "actual": 1.0} for u in unknown]
    }
    r = _feedback(client, body)
    assert r.status_code == 200
    assert r.json() == {"accepted": 1, "unknown_request_ids": unknown, "overwritten_request_ids": []}
    with _db(client).connect() as conn:
        assert [x for (x,) in conn.execute(sa.text("select request_id from feedback"))] == [ids[0]]


def test_second_label_conflicts_unless_overwrite(client: TestClient, fitted: exports.Fitted) -> None:
    ids = _ids(client, fitted.records[:3])
    assert _feedback(client, {"items": [{"request_id": ids[0], "actual": 5.0}]}).status_code == 200
    r = _feedback(
        client, {"items": [{"request_id": ids[1], "actual": 6.0}, {"request_id": ids[0], "actual": 7.0}]}
    )
    assert r.status_code == 409 and r.json()["error_code"] == "CONFLICT"
    assert ids[0] in r.json()["message"] and r.json()["details"]["request_ids"] == [ids[0]]
    labelled = client.get("/predictions", params={"labelled": "true"}).json()["items"]
    assert [(x["request_id"], x["actual"]) for x in labelled] == [(ids[0], 5.0)]  # nothing of it stored
    body = {
        "items": [{"request_id": ids[1], "actual": 6.0}, {"request_id": ids[0], "actual": 7.0}],
        "overwrite": True,
    }
    r = _feedback(client, body)
    assert (
        r.status_code == 200 and r.json()["overwritten_request_ids"] == [ids[0]] and r.json()["accepted"] == 2
    )
    labelled = client.get("/predictions", params={"labelled": "true"}).json()["items"]
    assert [(x["request_id"], x["actual"]) for x in labelled] == [(ids[0], 7.0), (ids[1], 6.0)]
    with _db(client).connect() as conn:
        audit = conn.execute(
            sa.text("select request_id, old_actual, new_actual, at from feedback_audit")
        ).all()
    assert [(a[0], a[1], a[2]) for a in audit] == [(ids[0], 5.0, 7.0)] and audit[0][3] is not None


# ------------------------------------------------------------------ bounded inputs
@pytest.fixture
def small_client(model_dir: Path, make_settings: Callable[..., Any]) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(model_dir, max_body_bytes=4096))) as c:
        yield c


@pytest.mark.parametrize("path", ["/predict", "/feedback"])
def test_body_over_the_limit_is_413_before_parsing(client: TestClient, path: str) -> None:
    body = b'{"records": [' + b" " * (10 * 1024 * 1024) + b"]}"  # 10 MB of JSON whitespace
    r = client.post(path, content=body, headers={**JSON, **LABELLER})
    assert r.status_code == 413 and r.json()["error_code"] == "PAYLOAD_TOO_LARGE"


def test_streamed_body_over_the_limit_is_413(small_client: TestClient, fitted: exports.Fitted) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is checked while the body streams in
        yield b'{"records": ['
        for _ in range(100):
            yield orjson.dumps(fitted.records[0]) + b","
        yield orjson.dumps(fitted.records[0]) + b"]}"

    r = small_client.post("/predict", content=chunks(), headers=JSON)
    assert r.status_code == 413
    ok = small_client.post("/predict", content=iter([orjson.dumps(fitted.records[0])]), headers=JSON)
    assert ok.status_code == 200  # a streamed body under the limit is handed on whole


def test_default_body_limit_holds_a_full_batch(client: TestClient, fitted: exports.Fitted) -> None:
    # 10,000 records (MAX_BATCH_RECORDS) with every category 40 characters long: about 6 MB, more than
    # 10,000 real rows of the widest builtin dataset (uci-por, 33 columns: 4.5 MB) take
    rec = {k: (v if not isinstance(v, str) else v.ljust(40, "_")) for k, v in fitted.records[0].items()}
    body = orjson.dumps({"records": [rec] * 10_000})
    assert len(body) < client.app.state.svc.settings.max_body_bytes  # type: ignore[attr-defined]
    assert client.post("/predict", content=body, headers=JSON).status_code == 200


@pytest.mark.parametrize(
    "ctype",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "application/xml"],
)
@pytest.mark.parametrize("path", ["/predict", "/feedback"])
def test_json_endpoints_refuse_other_content_types(
    client: TestClient, fitted: exports.Fitted, path: str, ctype: str | None
) -> None:
    body = orjson.dumps(
        fitted.records[0] if path == "/predict" else {"items": [{"request_id": "a", "actual": 1}]}
    )
    headers = {**LABELLER, **({"Content-Type": ctype} if ctype else {})}
    r = client.post(path, content=body, headers=headers)
    assert r.status_code == 415 and r.json()["error_code"] == "UNSUPPORTED_MEDIA_TYPE"


def test_json_with_charset_accepted(client: TestClient, fitted: exports.Fitted) -> None:
    r = client.post(
        "/predict",
        content=orjson.dumps(fitted.records[0]),
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert r.status_code == 200


@pytest.mark.parametrize(
    "n", [1, 20]
)  # the record-by-record path and the column-wise fast path (> 8 records)
def test_long_category_string_refused(client: TestClient, fitted: exports.Fitted, n: int) -> None:
    recs = [dict(r) for r in fitted.records[:n]]
    recs[-1]["school_type"] = "x" * 1_000_000
    r = client.post("/predict", json={"records": recs})
    assert r.status_code == 422
    (d,) = r.json()["details"]
    assert (d["field"], d["rule"], d["index"]) == ("school_type", "string_too_long", n - 1)
    assert len(r.content) < 2000  # the value is not echoed


def test_unknown_keys_echoed_truncated(client: TestClient, fitted: exports.Fitted) -> None:
    key = "k" * 100_000
    for body in ({**fitted.records[0], key: 1}, {"records": [fitted.records[0]], key: 1}):
        r = client.post("/predict", json=body)
        assert r.status_code == 422 and len(r.content) < 2000
        assert r.json()["details"][0]["field"] == "k" * 64 + "..."


def test_many_unknown_keys_report_at_most_50(client: TestClient, fitted: exports.Fitted) -> None:
    r = client.post("/predict", json={**fitted.records[0], **{f"x{i}": 1 for i in range(5000)}})
    assert r.status_code == 422 and len(r.json()["details"]) == 50


def test_log_stores_the_validated_record_not_the_raw_body(client: TestClient, fitted: exports.Fitted) -> None:
    rec = fitted.records[0]
    # a duplicate key: the parser keeps the last value (17), the raw text also holds the first one
    raw = b'{"age": 987654321, ' + orjson.dumps(rec)[1:-1].replace(b'"age":', b'"age":17,"zz_age":', 1) + b"}"
    raw = raw.replace(b',"zz_age":' + str(rec["age"]).encode(), b"", 1)
    raw = b"   " + raw + b"   "  # padding
    assert b"987654321" in raw
    r = client.post("/predict", content=raw, headers=JSON)
    assert r.status_code == 200, r.text
    row = client.get("/predictions").json()["items"][-1]
    assert row["features"] == {**rec, "age": 17}
    with _db(client).connect() as conn:
        stored = conn.execute(sa.text("select records from prediction_batches")).scalar_one()
    assert "987654321" not in stored and orjson.loads(stored) == [{**rec, "age": 17}]


# ------------------------------------------------------------------ no 5xx on any input
@pytest.mark.parametrize(
    "params",
    [
        {"since_id": str(2**64)},
        {"since_id": str(2**63)},
        {"since_id": "-1"},
        {"since_id": "1e3"},
        {"since_id": "9" * 5000},
        {"limit": "0"},
        {"limit": "10001"},
        {"limit": str(10**30)},
        {"since": "0001-01-01T00:00:00+01:00"},
        {"since": "9999-12-31T23:59:59-01:00"},
        {"since": "0000-01-01T00:00:00"},
        {"since": "10000-01-01T00:00:00"},
        {"since": "2026-13-01T00:00:00"},
        {"since": "1" * 40},
        {"since": "not a date"},
        {"since": "0.5"},  # a number, not a date-time (pydantic alone reads it as a Unix time)
        {"since": "1700000000"},
        {"labelled": "maybe"},
    ],
)
def test_bad_query_params_are_422(client: TestClient, params: dict[str, str]) -> None:
    r = client.get("/predictions", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error_code"] == "INVALID_INPUT" and r.json()["details"][0]["field"]


@pytest.mark.parametrize(
    "params",
    [
        {"since_id": str(2**63 - 1)},
        {"since_id": "0"},
        {"since": "0001-01-01T00:00:00"},  # naive = UTC
        {"since": "0001-01-01T00:00:00-01:00"},
        {"since": "9999-12-31T23:59:59"},
        {"since": "9999-12-31T23:59:59+01:00"},
        {"since": "2026-12-02T10:00:00Z", "labelled": "true", "since_id": str(2**63 - 1)},
    ],
)
def test_extreme_but_valid_query_params(
    client: TestClient, fitted: exports.Fitted, params: dict[str, str]
) -> None:
    _ids(client, fitted.records[:2])
    r = client.get("/predictions", params=params)
    assert r.status_code == 200, r.text


def test_since_is_timezone_aware(client: TestClient, fitted: exports.Fitted) -> None:
    _ids(client, fitted.records[:1])
    ts = client.get("/predictions").json()["items"][0]["ts"]  # UTC
    from datetime import datetime, timedelta, timezone

    t = datetime.fromisoformat(ts)
    plus2 = (t + timedelta(hours=2)).replace(tzinfo=timezone(timedelta(hours=2))).isoformat()
    naive = t.replace(tzinfo=None).isoformat()
    for since in (plus2, naive, ts):
        assert len(client.get("/predictions", params={"since": since}).json()["items"]) == 1, since
    later = (t + timedelta(seconds=1)).replace(tzinfo=None).isoformat()
    assert client.get("/predictions", params={"since": later}).json()["items"] == []


HOSTILE_BODIES: list[bytes] = [
    b"",
    b"null",
    b"[]",
    b"{}",
    b'"text"',
    b"1e999",
    b'{"records": null}',
    b'{"records": {}}',
    b'{"records": [null]}',
    b'{"records": [[]]}',
    b'{"records": [1, "a", true]}',
    b"[" * 100_000,
    b'{"a":' * 10_000,
    b"\xff\xfe\x00",
    b'{"records": [' + b"{}," * 20_000 + b"{}]}",
    b'{"items": [{"request_id": "a", "actual": NaN}]}',
]


@pytest.mark.parametrize("path", ["/predict", "/feedback"])
def test_hostile_bodies_never_5xx(client: TestClient, fitted: exports.Fitted, path: str) -> None:
    bodies = [
        *HOSTILE_BODIES,
        json.dumps({**fitted.records[0], "age": 10**30}).encode(),
        json.dumps({**fitted.records[0], "age": -(2**70)}).encode(),
        json.dumps({**fitted.records[0], "age": 2**64}).encode(),
        orjson.dumps({**fitted.records[0], "school_type": {"a": 1}}),
        orjson.dumps({"records": [{**fitted.records[0], "age": 1e308}] * 20}),
    ]
    for body in bodies:
        r = client.post(path, content=body, headers={**JSON, **LABELLER})
        assert 400 <= r.status_code < 500, (body[:80], r.status_code, r.text[:300])
        assert r.json()["error_code"]


# ------------------------------------------------------------------ every status documented
def test_openapi_documents_statuses_and_content_types(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]

    def codes(path: str, method: str) -> set[str]:
        return set(paths[path][method]["responses"])

    assert codes("/feedback", "post") >= {"200", "401", "409", "413", "415", "422", "503"}
    assert codes("/predict", "post") >= {"200", "404", "413", "415", "422", "503"}
    assert codes("/readings", "post") >= {"200", "401", "413", "415", "422", "503"}
    assert codes("/predictions", "get") >= {"200", "422", "503"}
    assert codes("/model", "get") >= {"200", "503"} and codes("/ready", "get") >= {"200", "503"}
    err = paths["/feedback"]["post"]["responses"]["401"]["content"]["application/json"]["schema"]
    assert err == {"$ref": "#/components/schemas/ErrorBody"}
    assert "WWW-Authenticate" in paths["/feedback"]["post"]["responses"]["401"]["headers"]
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert paths["/feedback"]["post"]["security"]  # the bearer scheme
    assert {"HTTPBearer"} <= set(spec["components"]["securitySchemes"])
    params = {p["name"]: p["schema"] for p in paths["/predictions"]["get"]["parameters"]}
    since_id = next(s for s in params["since_id"]["anyOf"] if s.get("type") == "integer")
    assert (since_id["minimum"], since_id["maximum"]) == (0, 2**63 - 1)
    body = paths["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    records = body["oneOf"][1]["properties"]["records"]
    assert (records["minItems"], records["maxItems"]) == (1, 10_000)
    by_id = spec["components"]["schemas"]["StudentRef"]
    assert by_id["required"] == ["student_id"] and by_id["properties"]["student_id"]["maxLength"] == 128
    assert body["oneOf"][2] == {"$ref": "#/components/schemas/StudentRef"}
    assert body["oneOf"][3]["properties"]["student_ids"]["maxItems"] == 10_000
    school = spec["components"]["schemas"]["Record"]["properties"]["school_type"]
    assert [s for s in school.get("anyOf", [school]) if s["type"] == "string"][0]["maxLength"] == 200
    actual = spec["components"]["schemas"]["FeedbackItem"]["properties"]["actual"]
    assert (actual["minimum"], actual["maximum"]) == (0, 20)
    fb = spec["components"]["schemas"]["FeedbackRequest"]
    assert fb["properties"]["items"]["minItems"] == 1 and fb["additionalProperties"] is False
