"""The feature store against its real backends: parquet + SQLite (always), PostgreSQL and Redis.

Each backend test writes dated readings, reads them back online and point-in-time, and checks the
two things training and serving rely on: a reading dated after a row's time never reaches that
row, and a reading older than the view's TTL is not used as if it were current.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest

from gradeflow_shared.errors import ConfigError
from gradeflow_shared.features import repo
from gradeflow_shared.features import store as fs
from gradeflow_shared.settings import FeatureStoreSettings
from gradeflow_shared.synth import generate_term, timeline_spec
from gradeflow_testkit.services import PG_ADMIN_URL, need, pg_problem

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def profile_rows(ids: list[str], at: datetime) -> pd.DataFrame:
    """One complete profile row per id (values from the synthetic generator's first rows)."""
    hist = generate_term(len(ids), seed=3, start=at + timedelta(days=1))
    out = hist.profile.copy()
    out["student_id"] = ids
    return out


def activity_row(sid: str, at: datetime, **values: float) -> dict:
    base = {
        "student_id": sid,
        "event_timestamp": at,
        "study_hours_per_week": 5.0,
        "attendance_pct": 90.0,
        "absences": 1,
        "sleep_hours": 7.5,
        "tutoring_sessions": 0,
        "term_grade": 12.0,
    }
    return {**base, **values}


def _pg_feature_url() -> str:
    problem = pg_problem()
    if problem:
        need(problem)
    parts = urlsplit(PG_ADMIN_URL)
    return f"postgresql://{parts.username or 'postgres'}@{parts.hostname}:{parts.port or 5432}{parts.path}?sslmode=disable"


@pytest.fixture(
    params=[
        "file+sqlite",
        pytest.param("postgres+sqlite", marks=pytest.mark.postgres),
        pytest.param("file+redis", marks=pytest.mark.redis),
        pytest.param("postgres+redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    """A fresh store on one backend pair, in a project of its own (its data removed afterwards)."""
    offline, online = request.param.split("+")
    project = f"t{uuid.uuid4().hex[:12]}"
    redis_url = request.getfixturevalue("redis_url") if online == "redis" else ""
    settings = FeatureStoreSettings(
        feature_store_dir=tmp_path / "fs",
        feature_project=project,
        feature_offline_store_url=_pg_feature_url() if offline == "postgres" else "",
        feature_online_store_url=redis_url,
    )
    st = fs.feature_store(settings)
    fs.apply(st)
    try:
        yield st
    finally:
        _cleanup(st, offline, redis_url)


def _cleanup(st, offline: str, redis_url: str) -> None:
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"*{st.project}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    if offline == "postgres":
        from sqlalchemy import text

        with fs.postgres(st) as conn:
            tables = conn.execute(
                text("select tablename from pg_tables where schemaname = 'public' and tablename like :p"),
                {"p": f"{st.project}%"},
            ).scalars()
            for t in list(tables):
                conn.execute(text(f'drop table "{t}"'))
        st.registry.delete_project(st.project, commit=True)


def test_readings_online_and_point_in_time(store) -> None:
    ids = ["A", "B", "C"]
    fs.write_history(store, repo.PROFILE_VIEW, profile_rows(ids, T0 - timedelta(days=30)))
    label_time = T0
    fs.push(
        store,
        pd.DataFrame(
            [
                activity_row("A", T0 - timedelta(days=10), attendance_pct=91.0),
                activity_row("A", T0 - timedelta(days=3), attendance_pct=88.0, term_grade=13.5),
                # dated after the label time: must never reach A's training row
                activity_row("A", T0 + timedelta(days=1), attendance_pct=5.0, term_grade=1.0),
                # older than the activity TTL (35 days) at the label time: not current any more
                activity_row("B", T0 - timedelta(days=40), attendance_pct=77.0),
            ]
        ),
    )
    # a partial reading (attendance only): the other activity features are carried forward
    fs.push(
        store,
        pd.DataFrame(
            [{"student_id": "C", "event_timestamp": T0 - timedelta(days=2), "attendance_pct": 60.0}]
        ),
    )

    online = fs.online_features(store, ["A", "B", "C", "nobody"], ["attendance_pct", "term_grade", "age"])
    assert online["student_id"].tolist() == ["A", "B", "C", "nobody"]
    assert online["attendance_pct"].iloc[0] == pytest.approx(5.0)  # the latest reading is served
    assert online["attendance_pct"].iloc[1] == pytest.approx(77.0)
    assert online["attendance_pct"].iloc[2] == pytest.approx(60.0)
    assert pd.isna(online["term_grade"].iloc[2])  # C never had a term grade: nothing to carry forward
    assert online.iloc[3][["attendance_pct", "term_grade", "age"]].isna().all()  # unknown student

    labels = pd.DataFrame(
        {
            "student_id": ["A", "B", "A", "A"],
            "event_timestamp": [label_time, label_time, label_time, T0 - timedelta(days=5)],
            "y": [1, 2, 3, 4],
        }
    )
    got = fs.historical_features(store, labels, ["attendance_pct", "term_grade", "age"])
    assert got["y"].tolist() == [1, 2, 3, 4]  # every label row, in order (also the duplicated key)
    a = got[got["student_id"] == "A"]
    assert a["attendance_pct"].tolist() == [88.0, 88.0, 91.0]  # never the 5.0 dated after the label
    assert a["term_grade"].tolist() == [13.5, 13.5, 12.0]
    b = got[got["student_id"] == "B"].iloc[0]
    assert pd.isna(b["attendance_pct"])  # 40 days old at the label time: beyond the TTL
    assert not pd.isna(b["age"])  # the profile view has its own, longer TTL
    assert got["age"].notna().all()


def test_materialize_copies_the_latest_history_to_the_online_store(store) -> None:
    now = datetime.now(UTC)
    fs.write_history(store, repo.PROFILE_VIEW, profile_rows(["M"], now - timedelta(days=20)))
    fs.write_history(
        store,
        repo.ACTIVITY_VIEW,
        pd.DataFrame(
            [
                activity_row("M", now - timedelta(days=6), attendance_pct=70.0),
                activity_row("M", now - timedelta(days=1), attendance_pct=72.5),
            ]
        ),
    )
    assert fs.online_features(store, ["M"], ["attendance_pct"])["attendance_pct"].isna().all()
    fs.materialize(store)
    got = fs.online_features(store, ["M"], ["attendance_pct", "previous_grade"])
    assert got["attendance_pct"].iloc[0] == pytest.approx(72.5)
    assert not np.isnan(got["previous_grade"].iloc[0])


def test_lineage_names_views_versions_and_ttls(store) -> None:
    lin = fs.lineage(store)
    assert set(lin["views"]) == {repo.PROFILE_VIEW, repo.ACTIVITY_VIEW}
    act = lin["views"][repo.ACTIVITY_VIEW]
    assert act["ttl_seconds"] == int(repo.ACTIVITY_TTL.total_seconds())
    assert "attendance_pct" in act["features"] and "age" not in act["features"]
    assert len(act["version"]) == 12 and act["version"] != lin["views"][repo.PROFILE_VIEW]["version"]


def test_view_version_changes_with_the_definition() -> None:
    cols = timeline_spec().columns or []
    act = [c for c in cols if c.name == "absences"]
    v1 = repo.view_version(repo.ACTIVITY_VIEW, act)
    changed = [act[0].model_copy(update={"max": 90})]
    assert repo.view_version(repo.ACTIVITY_VIEW, changed) != v1
    assert repo.view_version(repo.ACTIVITY_VIEW, [c.model_copy() for c in act]) == v1


def test_a_store_refuses_a_dataset_with_other_features(tmp_path: Path) -> None:
    st = fs.feature_store(FeatureStoreSettings(feature_store_dir=tmp_path / "fs"))
    fs.apply(st)
    fs.apply(st)  # idempotent
    from gradeflow_shared.datasets import load_spec

    with pytest.raises(ConfigError, match="FEATURE_PROJECT"):
        fs.apply(st, load_spec("uci-por"))


@pytest.mark.parametrize(
    ("url", "problem"),
    [("mysql://h/db", "postgresql://"), ("postgresql://host", "database"), ("postgresql:///db", "host")],
)
def test_offline_url_is_checked(tmp_path: Path, url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        fs.feature_store(FeatureStoreSettings(feature_store_dir=tmp_path, feature_offline_store_url=url))


def test_redis_url_is_translated_for_feast() -> None:
    assert fs._redis_connection_string("redis://:pw@cache:6380/2") == "cache:6380,db=2,password=pw"
    assert fs._redis_connection_string("rediss://cache") == "cache:6379,db=0,ssl=true"
    with pytest.raises(ConfigError, match="FEATURE_ONLINE_STORE_URL"):
        fs._redis_connection_string("http://cache")


def test_importing_the_store_functions_does_not_import_feast() -> None:
    """Inference imports these functions; feast (seconds to import) loads only when one is called."""
    import subprocess
    import sys

    code = (
        "import sys, gradeflow_shared.features.store, gradeflow_shared.features.seed, gradeflow_shared.synth; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('feast', 'dask')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout


def _history_rows(st, view: str) -> int:
    if fs._layout(st).postgres:
        from sqlalchemy import text

        with fs.postgres(st) as conn:
            return int(
                conn.execute(text(f'select count(*) from "{repo.history_table(view, st.project)}"')).scalar()
            )
    return len(pd.read_parquet(fs.store_root(st) / "offline" / view))


def test_seed_writes_a_history_once_then_recalls_it(store) -> None:
    from gradeflow_shared.features.seed import _records, seed, training_frame

    spec = timeline_spec(students=40, seed=1)
    first = seed(store, spec)
    n = _history_rows(store, repo.ACTIVITY_VIEW)
    assert n == 40 * 16 and _history_rows(store, repo.PROFILE_VIEW) == 40
    again = seed(store, spec)
    assert _history_rows(store, repo.ACTIVITY_VIEW) == n and len(_records(store)) == 1
    pd.testing.assert_frame_equal(again.labels, first.labels)
    # materialized for serving: the latest reading of each student is online
    online = fs.online_features(store, first.labels["student_id"].tolist(), ["attendance_pct", "age"])
    assert online.notna().all().all()
    X, y = training_frame(store, first, [c.name for c in spec.columns or []])
    assert len(X) == 40 and not X.isna().any().any() and y.tolist() == first.labels["final_grade"].tolist()


def test_online_read_tells_present_missing_expired_and_unknown(store) -> None:
    now = datetime.now(UTC)
    fs.write_history(store, repo.PROFILE_VIEW, profile_rows(["fresh"], now - timedelta(days=2)))
    fs.push(
        store,
        pd.DataFrame(
            [
                activity_row("fresh", now - timedelta(days=1)),
                activity_row("stale", now - timedelta(days=60), attendance_pct=50.0),
            ]
        ),
    )
    fs.push(store, pd.DataFrame([{"student_id": "partial", "event_timestamp": now, "attendance_pct": 70.0}]))
    fs.materialize(store)
    got = fs.online_read(
        store, ["fresh", "stale", "partial", "ghost"], ["attendance_pct", "term_grade", "age"]
    )
    assert got.unknown == ["ghost"]
    assert got.problems(0) == {}
    assert got.problems(1) == {"attendance_pct": "expired", "term_grade": "expired", "age": "missing"}
    assert got.values["attendance_pct"].iloc[1] == pytest.approx(50.0)  # kept by the store, but not current
    assert got.problems(2) == {"term_grade": "missing", "age": "missing"}
    assert set(got.problems(3).values()) == {"missing"}


def test_apply_rewrites_the_registry_only_when_a_definition_changes(tmp_path: Path) -> None:
    st = fs.feature_store(FeatureStoreSettings(feature_store_dir=tmp_path / "fs"))
    fs.apply(st)
    registry = tmp_path / "fs" / fs.REGISTRY_DB
    before = registry.stat().st_mtime_ns
    fs.apply(st)
    assert registry.stat().st_mtime_ns == before
    spec = timeline_spec()
    spec.columns = [
        c.model_copy(update={"max": 90}) if c.name == "absences" else c for c in spec.columns or []
    ]
    fs.apply(st, spec)  # same features, other bounds: a new version of the activity view
    assert registry.stat().st_mtime_ns != before
    assert fs.lineage(st)["views"][repo.ACTIVITY_VIEW]["version"] == repo.view_version(
        repo.ACTIVITY_VIEW, [c for c in spec.columns if c.name in spec.activity_columns]
    )


def test_using_the_store_leaves_prometheus_in_memory(tmp_path: Path) -> None:
    """``import feast`` sets PROMETHEUS_MULTIPROC_DIR; a service using the store must not inherit it."""
    import subprocess
    import sys

    code = (
        "import os, sys, pandas as pd; from datetime import UTC, datetime; "
        "from gradeflow_shared.settings import FeatureStoreSettings; "
        "import gradeflow_shared.features.repo; "  # feast imported through the definitions first
        "from gradeflow_shared.features import store as fs; "
        f"st = fs.feature_store(FeatureStoreSettings(feature_store_dir={str(tmp_path)!r})); fs.apply(st); "
        "fs.push(st, pd.DataFrame([{'student_id': 'a', 'event_timestamp': datetime.now(UTC), 'absences': 1}])); "
        "fs.materialize(st); "
        "from prometheus_client import values; "
        "print('feast.metrics' in sys.modules, sorted(k for k in os.environ if k.startswith('PROMETHEUS')), "
        "values.ValueClass.__name__)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300, env=env
    )
    assert out.stdout.strip().splitlines()[-1] == "True [] MutexValue", out.stdout


def test_a_late_reading_never_replaces_a_newer_online_value(store) -> None:
    """Arrival order does not matter online: the newest event time wins; the late reading still goes to
    the history (point-in-time training sees it at its own time)."""
    now = datetime.now(UTC).replace(microsecond=0)
    fs.write_history(store, repo.PROFILE_VIEW, profile_rows(["L"], now - timedelta(days=30)))
    fs.push(
        store,
        pd.DataFrame([activity_row("L", now - timedelta(days=10), attendance_pct=50.0, sleep_hours=6.0)]),
    )
    fs.push(
        store,
        pd.DataFrame([activity_row("L", now - timedelta(days=1), attendance_pct=80.0, sleep_hours=8.0)]),
    )
    # late: dated between the two, arrives last (a full reading, then a partial one)
    fs.push(store, pd.DataFrame([activity_row("L", now - timedelta(days=5), attendance_pct=20.0)]))
    fs.push(
        store,
        pd.DataFrame(
            [{"student_id": "L", "event_timestamp": now - timedelta(days=4), "attendance_pct": 30.0}]
        ),
    )
    got = fs.online_features(store, ["L"], ["attendance_pct", "sleep_hours"]).iloc[0]
    assert got["attendance_pct"] == pytest.approx(80.0)  # not 20 or 30: those are older
    assert got["sleep_hours"] == pytest.approx(8.0)
    # a second reading of the newest moment (a survey sent apart from the attendance): it is current
    fs.push(
        store,
        pd.DataFrame([{"student_id": "L", "event_timestamp": now - timedelta(days=1), "sleep_hours": 9.0}]),
    )
    got = fs.online_features(store, ["L"], ["attendance_pct", "sleep_hours"]).iloc[0]
    assert (got["attendance_pct"], got["sleep_hours"]) == (pytest.approx(80.0), pytest.approx(9.0))

    labels = pd.DataFrame(
        {
            "student_id": ["L"] * 3,
            "event_timestamp": [now - timedelta(days=d) for d in (4.5, 3, 0)],
        }
    )
    hist = fs.historical_features(store, labels, ["attendance_pct", "sleep_hours"])
    assert hist["attendance_pct"].tolist() == [20.0, 30.0, 80.0]
    # the partial late reading (attendance only) carried sleep_hours forward from what was known at
    # its own time (7.5 of the full late reading), not the newer online 8.0
    assert hist["sleep_hours"][:2].tolist() == [7.5, 7.5]
    assert hist["sleep_hours"].iloc[2] in (8.0, 9.0)  # two history rows of that moment: either


def test_materializing_an_older_window_keeps_a_newer_pushed_value(store) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    fs.write_history(store, repo.PROFILE_VIEW, profile_rows(["W"], now - timedelta(days=30)))
    fs.write_history(
        store,
        repo.ACTIVITY_VIEW,
        pd.DataFrame([activity_row("W", now - timedelta(days=6), attendance_pct=40.0)]),
    )
    fs.push(store, pd.DataFrame([activity_row("W", now - timedelta(days=1), attendance_pct=95.0)]))
    # the window holding only the older history row, materialized after the push
    with contextlib.redirect_stdout(io.StringIO()):
        store.materialize(start_date=now - timedelta(days=20), end_date=now - timedelta(days=2))
    assert fs.online_features(store, ["W"], ["attendance_pct"])["attendance_pct"].iloc[0] == pytest.approx(
        95.0
    )
    fs.materialize(store)  # the incremental run over everything: still the newest
    assert fs.online_features(store, ["W"], ["attendance_pct"])["attendance_pct"].iloc[0] == pytest.approx(
        95.0
    )


def test_the_sqlite_guard_is_what_keeps_the_newest(tmp_path: Path) -> None:
    """Feast's own SQLite writer lets a late reading win; the trigger is what stops it."""
    import sqlite3

    from feast.data_source import PushMode

    st = fs.feature_store(FeatureStoreSettings(feature_store_dir=tmp_path / "fs"))
    fs.apply(st)
    assert sorted(fs.guard_online_order(st)) == ["gradeflow_student_activity", "gradeflow_student_profile"]
    now = datetime.now(UTC)
    cols = fs.view_columns(st)[repo.ACTIVITY_VIEW]

    def feast_push(at: datetime, attendance: float) -> None:  # Feast alone: no guard installed by us
        rows = pd.DataFrame([activity_row("G", at, attendance_pct=attendance)])
        st.push(
            repo.push_source_name(repo.ACTIVITY_VIEW), fs._history_frame(rows, cols, now), to=PushMode.ONLINE
        )

    def online() -> float:
        return float(fs.online_features(st, ["G"], ["attendance_pct"])["attendance_pct"].iloc[0])

    feast_push(now - timedelta(days=1), 80.0)
    feast_push(now - timedelta(days=5), 20.0)
    assert online() == pytest.approx(80.0)  # guarded
    feast_push(now - timedelta(days=1), 81.0)
    assert online() == pytest.approx(81.0)  # the same event time replaces (a correction)
    with contextlib.closing(sqlite3.connect(tmp_path / "fs" / fs.ONLINE_DB)) as conn, conn:
        conn.execute('drop trigger "gradeflow_student_activity_keep_newest"')
    feast_push(now - timedelta(days=5), 20.0)
    assert online() == pytest.approx(20.0)  # unguarded Feast: the older reading overwrote the newer
