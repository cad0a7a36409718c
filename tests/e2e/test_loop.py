"""The closed loop, end to end, without a human.

train -> serve -> normal traffic (no drift verdict, no retrain) -> drifted traffic with feedback ->
drift detected -> exactly one retrain -> a new version promoted and served by itself -> its MAE on
the drifted data <= 0.8x the old model's -> no prediction request failed during the whole run ->
a second trigger during the retrain did not start another.

Runs against the four services as local processes on free ports, or against a running platform
given by E2E_*_URL (the container test). Every service's log is printed when it fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gradeflow_shared import synth
from gradeflow_testkit.loop import BackgroundTraffic, Urls, mae, predict, send_labelled, to_records, wait_for

from .conftest import _external, local_stack, print_logs

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

DRIFT_SCENARIO = os.environ.get("E2E_DRIFT_SCENARIO", "concept_study_hours")
NORMAL_ROWS = 400
DRIFT_ROWS = 1200


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Urls]:
    ext = _external()
    if ext is not None:
        yield ext
        return
    data_dir = tmp_path_factory.mktemp("e2e")
    urls, procs = local_stack(
        data_dir,
        {
            "DATASET": "synthetic",
            "CHECK_INTERVAL_SECONDS": "3",
            "WINDOW_SIZE": "1000",
            "MIN_WINDOW_ROWS": "200",
            "MIN_LABELLED_ROWS": "200",
            "RETRAIN_COOLDOWN_SECONDS": "900",
        },
    )
    request.node.procs = procs
    try:
        yield urls
    finally:
        if request.session.stash.get("e2e_failed", False) or request.session.testsfailed:  # type: ignore[attr-defined]
            print_logs(procs)
        for p in reversed(procs):
            p.stop()


def _jobs(c: httpx.Client) -> list[dict[str, Any]]:
    body = c.get("/jobs").json()
    return body["items"] if isinstance(body, dict) else body


def _drift(c: httpx.Client) -> dict[str, Any]:
    r = c.get("/drift")
    r.raise_for_status()
    return r.json()


def check_now(mon: httpx.Client) -> None:
    """POST /checks; a 409 means the scheduled check runs right now: try again."""
    r = wait_for("POST /checks", lambda: (x := mon.post("/checks")).status_code != 409 and x, timeout=120)
    assert r.status_code in (200, 202), r.text


def _served_version(c: httpx.Client) -> int | None:
    r = c.get("/model")
    return int(r.json()["version"]) if r.status_code == 200 else None


def test_closed_loop(platform: Urls) -> None:
    inf = httpx.Client(base_url=platform.inference, timeout=60)
    tr = httpx.Client(base_url=platform.trainer, timeout=30, headers=platform.auth)
    mon = httpx.Client(base_url=platform.monitor, timeout=120)

    # 1. the trainer trained and exported the first model; inference serves it
    wait_for("inference ready", lambda: inf.get("/ready").status_code == 200, timeout=600, interval=2)
    v1 = _served_version(inf)
    assert v1 is not None
    first_jobs = _jobs(tr)

    # prediction traffic runs in the background for the whole story; no request may fail
    traffic = BackgroundTraffic(
        platform.inference, to_records(synth.generate(300, seed=77).drop(columns=[synth.TARGET])), threads=2
    ).start()
    try:
        # 2. normal traffic with feedback: no drift verdict, no retrain
        normal = synth.generate(NORMAL_ROWS, seed=101)
        send_labelled(inf, normal, synth.TARGET)
        check_now(mon)
        verdict = wait_for(
            "a monitor verdict on normal traffic", lambda: _drift(mon).get("run_id"), timeout=120
        )
        assert verdict
        d = _drift(mon)
        assert not d["dataset_drift"], d
        assert not d["degraded"], d
        assert d["action"] != "retrain_triggered", d
        assert len(_jobs(tr)) == len(first_jobs), "a retrain started on normal traffic"

        # 3. the old model's error on drifted data (a holdout that is never sent as feedback)
        holdout = synth.generate(500, seed=999, scenario=DRIFT_SCENARIO)
        before = predict(inf, to_records(holdout.drop(columns=[synth.TARGET])))
        assert before.version == v1
        mae_before = mae(before.predictions, holdout[synth.TARGET])

        # 4. drifted traffic with feedback -> the monitor detects it and triggers exactly one retrain
        drifted = synth.generate(DRIFT_ROWS, seed=202, scenario=DRIFT_SCENARIO)
        send_labelled(inf, drifted, synth.TARGET)

        def retrain_job() -> dict[str, Any] | None:
            jobs = [j for j in _jobs(tr) if j["id"] not in {x["id"] for x in first_jobs}]
            return jobs[0] if jobs else None

        job = wait_for("the monitor to trigger a retrain", retrain_job, timeout=300, interval=2)

        # the monitor creates the job just before it stores the run behind it
        def drift_verdict() -> dict[str, Any] | None:
            x = _drift(mon)
            return x if x["dataset_drift"] or x["degraded"] else None

        d = wait_for("the verdict behind the retrain", drift_verdict, timeout=60)
        assert d["dataset_drift"] or d["degraded"], d

        # a second trigger while the job runs does not start another
        if job["state"] in ("queued", "running"):
            again = tr.post("/retrain", json={"reason": "e2e second trigger"})
            assert again.status_code in (200, 202), again.text
            if again.json()["state"] in ("queued", "running"):
                assert again.json()["id"] == job["id"]

        done = wait_for(
            "the retrain job to finish",
            lambda: (j := tr.get(f"/jobs/{job['id']}").json())["state"] in ("succeeded", "failed") and j,
            timeout=900,
            interval=2,
        )
        assert done["state"] == "succeeded", done
        assert done["result"]["decision"]["promoted"], done["result"]["decision"]
        v2 = int(done["result"]["version"])
        assert v2 > v1

        # 5. inference picks the new export up by itself
        wait_for(f"inference to serve version {v2}", lambda: _served_version(inf) == v2, timeout=60)
        after = predict(inf, to_records(holdout.drop(columns=[synth.TARGET])))
        assert after.version == v2
        mae_after = mae(after.predictions, holdout[synth.TARGET])
        print(f"MAE on drifted data: v{v1} {mae_before:.3f} -> v{v2} {mae_after:.3f}")
        assert mae_after <= 0.8 * mae_before, (mae_before, mae_after)

        # 6. the monitor keeps checking; no retrain storm: exactly one retrain job in the whole run
        check_now(mon)
        wait_for("another monitor check", lambda: _drift(mon).get("run_id") != d.get("run_id"), timeout=120)
        new_jobs = [j for j in _jobs(tr) if j["id"] not in {x["id"] for x in first_jobs}]
        assert len(new_jobs) == 1, new_jobs
    finally:
        traffic.stop()

    # 7. no prediction request failed during the whole run
    assert traffic.sent > 50
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.versions >= {v1, v2}
