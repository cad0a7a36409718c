"""Predicting by student id from Feast's Redis online store (the real Redis at TEST_REDIS_URL; skipped
without it, failed under REQUIRE_SERVICES=1)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from gradeflow_inference.app import create_app
from gradeflow_inference.online.reader import RedisOnline
from gradeflow_testkit import exports
from gradeflow_testkit.feature_store import reading_time, seeded_store


def test_redis_reader_agrees_with_feast_and_serves_by_id(
    redis_url: str,
    tmp_path: Path,
    model_dir: Path,
    make_settings: Callable[..., Any],
    fitted: exports.Fitted,
) -> None:
    import redis

    project = f"t{uuid.uuid4().hex[:12]}"  # keys of this test only (a shared server)
    s = seeded_store(
        tmp_path / "store", students=30, feature_online_store_url=redis_url, feature_project=project
    )
    try:
        full = s.online([s.ids[0]]).iloc[0].to_dict()
        s.push([{**full, "student_id": "OLD-1", "event_timestamp": reading_time(60)}])
        ids = [*s.ids[:20], "OLD-1"]
        feast = s.online(ids).to_dict(orient="records")
        reader = RedisOnline(s.settings.feature_store_path, redis_url)
        rows = reader.get([*ids, "nobody"])
        assert rows[-1] is None
        for want, got in zip(feast[:20], rows, strict=False):
            assert got is not None and not got.expired
            for feat, v in want.items():
                if feat != "student_id":
                    assert got.values[feat] == (None if isinstance(v, float) and math.isnan(v) else v)
        old = rows[20]
        assert old is not None and "attendance_pct" in old.expired and "age" in old.values
        # the predict path's form (tuples in the order asked), the same values
        features = tuple(reversed(reader.layout().feature_view))  # type: ignore[union-attr]
        found = reader.lookup([*ids, "nobody"], features)
        for got, row in zip(found[:20], rows, strict=False):
            assert type(got) is tuple and row is not None
            assert got == tuple(row.values[f] for f in features)
        assert not isinstance(found[20], tuple) and found[20] is not None and found[21] is None
        # a connection the server closed (restart, idle timeout): the next lookup still answers
        pool = reader._redis().connection_pool
        conn = pool.get_connection()
        conn.send_command("CLIENT", "ID")
        client_id = conn.read_response()
        pool.release(conn)
        admin = redis.Redis.from_url(redis_url)
        assert admin.client_kill_filter(_id=client_id) == 1
        admin.close()
        assert reader.lookup([*ids, "nobody"], features) == found
        reader.close()

        cfg = make_settings(
            model_dir,
            feature_store_dir=s.settings.feature_store_path,
            feature_online_store_url=redis_url,
            feature_project=project,
        )
        with TestClient(create_app(cfg)) as c:
            features = list(fitted.records[0])
            sent = c.post("/predict", json={f: feast[4][f] for f in features}).json()
            r = c.post("/predict", json={"student_id": s.ids[4]})
            assert r.status_code == 200, r.text
            assert abs(r.json()["predictions"][0]["prediction"] - sent["predictions"][0]["prediction"]) < 1e-6
            assert c.post("/predict", json={"student_id": "nobody"}).status_code == 404
            r = c.post("/predict", json={"student_id": "OLD-1"})
            assert r.status_code == 422 and {d["rule"] for d in r.json()["details"]} == {"feature_expired"}
    finally:
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=b"*" + project.encode(), count=1000):
            client.delete(key)
        client.close()


def test_a_late_reading_does_not_change_the_prediction_by_id_on_redis(
    redis_url: str, tmp_path: Path, model_dir: Path, make_settings: Callable[..., Any]
) -> None:
    """Feast's Redis writer compares event times itself: checked here end to end through POST /readings."""
    import redis

    from .test_by_id import predict_with_readings_out_of_order

    project = f"t{uuid.uuid4().hex[:12]}"
    s = seeded_store(
        tmp_path / "store", students=20, feature_online_store_url=redis_url, feature_project=project
    )
    try:
        cfg = make_settings(
            model_dir,
            feature_store_dir=s.settings.feature_store_path,
            feature_online_store_url=redis_url,
            feature_project=project,
        )
        with TestClient(create_app(cfg)) as c:
            predict_with_readings_out_of_order(c, s.ids[3])
        row = RedisOnline(s.settings.feature_store_path, redis_url).get([s.ids[3]])[0]
        assert row is not None and row.values["attendance_pct"] == 12.0 and row.values["absences"] == 30
    finally:
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=b"*" + project.encode(), count=1000):
            client.delete(key)
        client.close()
