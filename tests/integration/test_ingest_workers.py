"""Two ``gradeflow-inference`` processes on one data folder (one feature store, one readings journal):
each accepted reading is pushed once, one process runs the scheduled materialization, and when that
process is killed (SIGKILL: no clean-up) the survivor takes over its pending readings and its schedule.
Real processes, real HTTP, real Feast over parquet + SQLite."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from gradeflow_inference.online.journal import WORK_LOCK, FileLock
from gradeflow_shared.procs import ServiceProcess, bin_path
from gradeflow_testkit import exports
from gradeflow_testkit.feature_store import ADMIN_TOKEN, SeededStore, seeded_store
from gradeflow_testkit.servers import free_port

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> SeededStore:
    return seeded_store(tmp_path_factory.mktemp("workers-store"), students=30)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("workers-models")
    fitted = exports.fit_and_export(tmp)
    exports.republish(tmp / "models", fitted.exports["rf"], 1)
    return tmp / "models"


@pytest.fixture
def start(tmp_path: Path, seeded: SeededStore, models: Path) -> Iterator[Callable[[str], ServiceProcess]]:
    """Starts inference processes sharing DATA_DIR and FEATURE_STORE_DIR; all stopped afterwards."""
    started: list[ServiceProcess] = []

    def _start(name: str) -> ServiceProcess:
        port = free_port()
        svc = ServiceProcess(
            name=name,
            cmd=[bin_path("gradeflow-inference")],
            env={
                "DATA_DIR": str(tmp_path / "data"),
                "MODEL_DIR": str(models),
                "FEATURE_STORE_DIR": str(seeded.settings.feature_store_path),
                "FEATURE_MATERIALIZE_INTERVAL": "2",
                "FEATURE_PUSH_INTERVAL": "0.5",  # every process polls the journal twice a second
                "INFERENCE_PORT": str(port),
                "HOST": "127.0.0.1",
                "ADMIN_TOKEN": ADMIN_TOKEN,
            },
            log_path=tmp_path / "logs" / f"{name}.log",
            health_url=f"http://127.0.0.1:{port}/health",
        )
        started.append(svc)
        svc.start(wait=90)
        svc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        return svc

    yield _start
    for svc in started:
        svc.stop()


def _metrics(svc: ServiceProcess) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"{svc.url}/metrics", timeout=10).text.splitlines():  # type: ignore[attr-defined]
        if line.startswith("inference_feature_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _post(svc: ServiceProcess, readings: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(f"{svc.url}/readings", json={"readings": readings}, headers=AUTH, timeout=30)  # type: ignore[attr-defined]


def _sum(a: ServiceProcess, b: ServiceProcess, name: str) -> float:
    return _metrics(a)[name] + _metrics(b)[name]


def _wait(what: str, pred: Callable[[], Any], timeout: float, *procs: ServiceProcess) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name}\n{p.tail(40)}" for p in procs)
    raise AssertionError(f"{what}: not within {timeout:.0f}s\n{logs}")


def _history_rows(seeded: SeededStore, stamps: set[str]) -> int:
    """Rows of the activity history dated at one of ``stamps`` (ISO, UTC): each reading's row(s)."""
    folder = seeded.settings.feature_store_path / "offline" / "student_activity"
    hist = pd.concat([pd.read_parquet(p) for p in folder.glob("*.parquet")], ignore_index=True)
    ts = pd.to_datetime(hist["event_timestamp"], utc=True).map(lambda t: t.isoformat())
    return int(ts.isin(stamps).sum())


def _readings(seeded: SeededStore, n: int, tag: float) -> list[dict[str, Any]]:
    base = pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(hours=tag)
    return [
        {
            "student_id": seeded.ids[i % len(seeded.ids)],
            "event_timestamp": (base + pd.Timedelta(seconds=i)).isoformat(),
            "attendance_pct": 40.0 + i % 50,
        }
        for i in range(n)
    ]


def test_two_processes_push_each_reading_once_and_share_one_schedule(
    start: Callable[[str], ServiceProcess], seeded: SeededStore
) -> None:
    a, b = start("inference-a"), start("inference-b")
    # exactly one of them runs the scheduled materialization
    owners = _wait(
        "one schedule owner",
        lambda: (
            [m["inference_feature_schedule_owner"] for m in (_metrics(a), _metrics(b))] in ([1, 0], [0, 1])
            and [m["inference_feature_schedule_owner"] for m in (_metrics(a), _metrics(b))]
        ),
        30,
        a,
        b,
    )
    owner, other = (a, b) if owners == [1.0, 0.0] else (b, a)

    # warm up: each process opens Feast for its first push (seconds); then both push while readings pour in
    for svc, reading in zip((a, b), _readings(seeded, 2, tag=4), strict=True):
        assert _post(svc, [reading]).status_code == 200
    _wait("warm-up pushed", lambda: _sum(a, b, "inference_feature_readings_pushed_total") >= 2, 120, a, b)
    pushed0 = _sum(a, b, "inference_feature_readings_pushed_total")
    readings = _readings(seeded, 120, tag=5)

    def send(svc: ServiceProcess, part: list[dict[str, Any]]) -> None:
        for i in range(0, len(part), 6):
            r = _post(svc, part[i : i + 6])
            assert r.status_code == 200, r.text
            time.sleep(0.1)

    # the readings wait behind a held work lock (as behind a long push), so that both processes find the
    # same pending rows when it is released and both try to push them
    blocker = FileLock(seeded.settings.feature_store_path / WORK_LOCK)
    assert blocker.acquire(timeout=60)
    try:
        with ThreadPoolExecutor(2) as pool:  # both processes accept readings at the same time
            list(pool.map(send, (a, b), (readings[::2], readings[1::2])))
        time.sleep(1)
    finally:
        blocker.release()

    _wait("every reading pushed", lambda: _sum(a, b, "inference_feature_readings_pending") == 0, 120, a, b)
    assert _sum(a, b, "inference_feature_readings_pushed_total") - pushed0 == 120
    assert _history_rows(seeded, {r["event_timestamp"] for r in readings}) == 120  # none written twice

    # the schedule (every 2 s) ran in the owner only
    _wait(
        "scheduled materializations",
        lambda: _metrics(owner)['inference_feature_materializations_total{result="ok"}'] >= 2,
        120,
        owner,
    )
    assert _metrics(other).get('inference_feature_materializations_total{result="ok"}', 0.0) == 0.0


def test_a_killed_owner_is_taken_over(start: Callable[[str], ServiceProcess], seeded: SeededStore) -> None:
    a, b = start("inference-a"), start("inference-b")
    _wait(
        "one schedule owner",
        lambda: (
            _metrics(a)["inference_feature_schedule_owner"] + _metrics(b)["inference_feature_schedule_owner"]
            == 1
        ),
        30,
        a,
        b,
    )
    owner, other = (a, b) if _metrics(a)["inference_feature_schedule_owner"] == 1 else (b, a)
    # warm up: both have Feast open (their first push takes seconds), so from now on a push is quick
    for svc, reading in zip((a, b), _readings(seeded, 2, tag=8), strict=True):
        assert _post(svc, [reading]).status_code == 200
    _wait("warm-up pushed", lambda: _sum(a, b, "inference_feature_readings_pushed_total") >= 2, 120, a, b)
    pushed0 = _metrics(other)["inference_feature_readings_pushed_total"]
    # hold the work lock (as a long push of another process would): the owner accepts readings but
    # cannot push them; then it dies without any clean-up
    blocker = FileLock(seeded.settings.feature_store_path / WORK_LOCK)
    assert blocker.acquire(timeout=60)
    try:
        readings = _readings(seeded, 8, tag=9)
        r = _post(owner, readings)
        assert r.status_code == 200, r.text
        time.sleep(2)  # a process ignoring the lock would have pushed them by now (it polls every 0.5 s)
        assert _metrics(other)["inference_feature_readings_pending"] == 8  # the shared journal holds them
        owner.stop(sig=signal.SIGKILL)
        assert not owner.alive()
    finally:
        blocker.release()
    _wait(
        "the survivor pushes the dead owner's readings",
        lambda: _metrics(other)["inference_feature_readings_pending"] == 0,
        60,
        other,
    )
    assert _metrics(other)["inference_feature_readings_pushed_total"] - pushed0 == 8
    assert _history_rows(seeded, {r["event_timestamp"] for r in readings}) == 8
    _wait(
        "the survivor owns the schedule",
        lambda: _metrics(other)["inference_feature_schedule_owner"] == 1,
        30,
        other,
    )
    _wait(
        "the survivor materializes on schedule",
        lambda: _metrics(other)['inference_feature_materializations_total{result="ok"}'] >= 1,
        120,
        other,
    )
