"""The closed loop, end to end, without a human.

train -> serve -> normal traffic (no drift verdict, no retrain) -> drifted traffic with feedback ->
drift detected -> exactly one retrain -> a new version promoted and served by itself -> its MAE on
the drifted data <= 0.8x the old model's -> no prediction request failed during the whole run ->
a second check while the retrain runs (or in its cooldown) is recorded as "not triggered" with the
reason, and no other retrain starts.

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
from gradeflow_testkit.stack import external_platform, local_stack, print_logs, stop_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

DRIFT_SCENARIO = os.environ.get("E2E_DRIFT_SCENARIO", "concept_study_hours")
NORMAL_ROWS = 400
DRIFT_ROWS = 1200


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Urls]:
    ext = external_platform()
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
        stop_stack(procs)


def _jobs(c: httpx.Client) -> list[dict[str, Any]]:
    body = c.get("/jobs").json()
    return body["items"] if isinstance(body, dict) else body


def _drift(c: httpx.Client) -> dict[str, Any]:
    r = c.get("/drift")
    r.raise_for_status()
    return r.json()


def check_now(mon: httpx.Client) -> dict[str, Any]:
    """POST /checks and the verdict of that check; a 409 means the scheduled check runs now: try again."""
    r = wait_for(
        "POST /checks", lambda: (x := mon.post("/checks")).status_code != 409 and x, timeout=120, interval=0.2
    )
    assert r.status_code == 200, r.text
    return r.json()


def _served_version(c: httpx.Client) -> int | None:
    r = c.get("/model")
    return int(r.json()["version"]) if r.status_code == 200 else None


def test_closed_loop(platform: Urls) -> None:
    # the admin token: POST /feedback needs it (ADMIN_TOKEN or LABELLER_TOKEN)
    inf = httpx.Client(base_url=platform.inference, timeout=60, headers=platform.auth)
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
        d = check_now(mon)
        assert d["model_version"] == v1, d
        assert d["rows"] >= NORMAL_ROWS, d
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

        # the job was asked for by a monitor check that saw the drift, and that check was recorded
        trigger_run = job["monitor_run_id"]
        assert trigger_run, job
        assert job["reason"].startswith(f"monitor run {trigger_run}: "), job
        assert "drift" in job["reason"] or "degraded" in job["reason"], job
        # the check that triggers stores its run and report after the trigger call: wait for them
        report = wait_for(
            f"the report of monitor run {trigger_run}",
            lambda: (r := mon.get(f"/reports/{trigger_run}.json")).status_code == 200 and r,
            timeout=120,
        )
        assert str(report.json()["run_id"]) == str(trigger_run), report.text[:300]

        # a second check while the job runs (before it exports) finds the same drift and is recorded
        # as not triggered, with the reason
        again = check_now(mon)
        assert int(again["run_id"]) > int(trigger_run), (again, job)
        assert again["model_version"] == v1, ("the retrain exported before the second check", again)
        assert again["dataset_drift"] or again["degraded"], again
        assert again["action"] == "retrain_skipped", again
        assert f"retrain in flight (job {job['id']}" in again["action_reason"], again
        assert again["retrain_job_id"] is None, again
        assert _drift(mon)["run_id"] == again["run_id"], "the skipped check was not recorded"

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
        wait_for(f"inference to serve version {v2}", lambda: _served_version(inf) == v2, timeout=120)
        after = predict(inf, to_records(holdout.drop(columns=[synth.TARGET])))
        assert after.version == v2
        mae_after = mae(after.predictions, holdout[synth.TARGET])
        print(f"MAE on drifted data: v{v1} {mae_before:.3f} -> v{v2} {mae_after:.3f}")
        assert mae_after <= 0.8 * mae_before, (mae_before, mae_after)

        # 6. the monitor now checks the new version, and no other retrain started in the whole run
        latest = check_now(mon)
        assert latest["model_version"] == v2, latest
        assert latest["action"] != "retrain_triggered", latest
        new_jobs = [j for j in _jobs(tr) if j["id"] not in {x["id"] for x in first_jobs}]
        assert len(new_jobs) == 1, new_jobs
    finally:
        traffic.stop()

    # 7. no prediction request failed during the whole run
    assert traffic.sent > 50
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.versions >= {v1, v2}
