"""Settle after healing, with the four services as real processes and the monitor's own scheduler.

A permanent shift (attendance falls, absences rise) with labelled feedback keeps arriving. The
monitor's scheduler flags the serving model (drift against its training sample), triggers ONE
retrain, the new version is promoted on the recent labelled holdout and exported with that holdout's
error as its ``performance_baseline`` and those rows as its drift reference. The shift goes on for
more than three cooldown periods: the monitor keeps checking the new version (cooldown over, enough
new labels, no job in flight), finds no drift against the rows it was promoted on and an error
within its baseline, and asks for no second retrain. (Judged as before -- drift against the training
sample, error against the base test MAE -- it retrains again after each cooldown: see the report.)
A second, different shift later (attendance back to normal, the effect of study hours changes) is
drift against those rows and an error above the baseline: a second retrain.

The report of the check that triggered the first retrain names the action and the job.
Local processes only (it sets the monitor's cooldown and interval).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gradeflow_shared import synth
from gradeflow_testkit.loop import Urls, feedback, predict, to_records, wait_for
from gradeflow_testkit.stack import external_platform, local_stack, print_logs, stop_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

COOLDOWN = 6.0  # seconds: RETRAIN_COOLDOWN_SECONDS
INTERVAL = 2.0  # seconds: CHECK_INTERVAL_SECONDS
SHIFT_A = "covariate_attendance"
SHIFT_B = "concept_study_hours"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Urls]:
    if external_platform() is not None:
        pytest.skip("needs its own monitor settings (cooldown, interval): local processes only")
    data_dir = tmp_path_factory.mktemp("settle")
    urls, procs = local_stack(
        data_dir,
        {
            "DATASET": "synthetic",
            "TRAIN_SEARCH": "false",
            "CHECK_INTERVAL_SECONDS": str(INTERVAL),
            "WINDOW_SIZE": "500",
            "MIN_WINDOW_ROWS": "100",
            "MIN_LABELLED_ROWS": "100",
            "RETRAIN_COOLDOWN_SECONDS": str(COOLDOWN),
            "REPORT_KEEP": "200",
        },
    )
    try:
        yield urls
    finally:
        if request.session.testsfailed:
            print_logs(procs)
        stop_stack(procs)


class Feeder:
    """Labelled traffic of one scenario, a batch every ``pause`` seconds, until stopped or switched."""

    def __init__(self, urls: Urls, scenario: str, batch: int = 40, pause: float = 0.5) -> None:
        self.urls, self.scenario, self.batch, self.pause = urls, scenario, batch, pause
        self.sent = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="feeder")

    def _run(self) -> None:
        seed = 10_000
        with httpx.Client(base_url=self.urls.inference, timeout=60) as c:
            while not self._stop.is_set():
                seed += 1
                df = synth.generate(self.batch, seed=seed, scenario=self.scenario)
                try:
                    out = predict(c, to_records(df.drop(columns=[synth.TARGET])))
                    feedback(c, out.request_ids, df[synth.TARGET].tolist(), self.urls.auth)
                    self.sent += len(df)
                except httpx.HTTPError as exc:
                    self.errors.append(f"{exc.__class__.__name__}: {exc}")
                self._stop.wait(self.pause)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def bulk_labelled(c: httpx.Client, urls: Urls, scenario: str, n: int, seed: int) -> None:
    """``n`` predictions first, then all their labels in one call (the trainer then pulls them all)."""
    df = synth.generate(n, seed=seed, scenario=scenario)
    ids: list[str] = []
    for i in range(0, n, 250):
        ids += predict(c, to_records(df.drop(columns=[synth.TARGET]).iloc[i : i + 250])).request_ids
    feedback(c, ids, df[synth.TARGET].tolist(), urls.auth)


def monitor_jobs(tr: httpx.Client) -> list[dict[str, Any]]:
    body = tr.get("/jobs").json()
    jobs = body["items"] if isinstance(body, dict) else body
    return sorted((j for j in jobs if j.get("monitor_run_id")), key=lambda j: j["created_at"])


def run_report(mon: httpx.Client, run_id: int) -> dict[str, Any] | None:
    r = mon.get(f"/reports/{run_id}.json")
    return r.json() if r.status_code == 200 else None


def test_one_retrain_per_shift_then_settled(stack: Urls) -> None:
    t0 = time.monotonic()
    marks: dict[str, float] = {}
    inf = httpx.Client(base_url=stack.inference, timeout=60)
    tr = httpx.Client(base_url=stack.trainer, timeout=30)
    mon = httpx.Client(base_url=stack.monitor, timeout=60)
    wait_for("inference ready", lambda: inf.get("/ready").status_code == 200, timeout=300, interval=1)
    v1 = int(inf.get("/model").json()["version"])
    marks["stack up, v1 served"] = time.monotonic() - t0

    # shift A, permanent: a bulk of labelled rows, then a steady labelled stream
    bulk_labelled(inf, stack, SHIFT_A, 600, seed=500)
    feeder = Feeder(stack, SHIFT_A).start()
    try:
        job1 = wait_for(
            "the monitor to trigger retrain 1", lambda: monitor_jobs(tr), timeout=120, interval=1
        )[0]
        marks["retrain 1 triggered"] = time.monotonic() - t0
        trigger_run = int(job1["monitor_run_id"])
        done = wait_for(
            "retrain 1 to finish",
            lambda: (j := tr.get(f"/jobs/{job1['id']}").json())["state"] in ("succeeded", "failed") and j,
            timeout=240,
            interval=1,
        )
        assert done["state"] == "succeeded" and done["result"]["decision"]["promoted"], done
        v2 = int(done["result"]["version"])
        wait_for(
            f"inference to serve v{v2}", lambda: int(inf.get("/model").json()["version"]) == v2, timeout=60
        )
        marks["v2 served"] = time.monotonic() - t0

        # the shift goes on: wait for the first check of v2 with a performance verdict, then observe the
        # scheduler's checks for more than three cooldown periods
        def first_v2_verdict() -> dict[str, Any] | None:
            d = mon.get("/drift").json()
            perf = d.get("performance") or {}
            return d if d.get("model_version") == v2 and perf.get("labelled_rows", 0) >= 100 else None

        first = wait_for("a check of v2 with 100 labelled rows", first_v2_verdict, timeout=90, interval=0.5)
        settle_from = time.monotonic()
        # the scheduler's checks of v2 for more than three cooldown periods (checks take seconds each on a
        # loaded machine: wait for the check times, not a fixed sleep)
        wait_for(
            "checks of v2 over three cooldown periods",
            lambda: (
                _seconds(first["at"], (d := mon.get("/drift").json())["at"]) > 3 * COOLDOWN + INTERVAL
                and d["model_version"] == v2
            ),
            timeout=120,
            interval=1,
        )
        marks["settled period observed"] = time.monotonic() - t0
        assert len(monitor_jobs(tr)) == 1, monitor_jobs(tr)
        last_a = mon.get("/drift").json()
    finally:
        feeder.stop()
    assert feeder.errors == [], feeder.errors[:3]

    # every check of v2 during the permanent shift: judged against v2's recent-holdout baseline, no retrain
    runs = [r for i in range(trigger_run + 1, int(last_a["run_id"]) + 1) if (r := run_report(mon, i))]
    v2_runs = [r for r in runs if r["model_version"] == v2]
    judged = [r for r in v2_runs if r["verdict"]["performance_verdict"]]
    assert judged, v2_runs[-1:]
    span = _seconds(judged[0]["checked_at"], judged[-1]["checked_at"])
    assert span >= 3 * COOLDOWN, (span, len(judged), time.monotonic() - settle_from)
    # the traffic is compared with the rows v2 was promoted on: the shift it was trained for is no drift.
    # A single window can still flag a few columns by chance (each at its own 99 % noise level); without
    # degradation that is noted and left for the next check to confirm, so two in a row never happen here
    drifted = [r["verdict"]["dataset_drift"] for r in judged]
    assert sum(drifted) <= len(judged) // 3 and not any(
        a and b for a, b in zip(drifted, drifted[1:], strict=False)
    ), [r["verdict"] for r in judged]
    for r in judged:
        p = r["performance_vs_baseline"]
        assert p["baseline_set"] == "recent_labelled" and p["baseline_rows"] and p["baseline_rows"] >= 50, p
        assert not r["verdict"]["degraded"], p
        assert r["verdict"]["reference"] == "recent_labelled", r["verdict"]
        assert r["action"]["action"] != "retrain_triggered", r["action"]
    # the guards were open (cooldown over, >= 100 labelled rows, all newer than the trigger): only the
    # judgement against the baseline kept the monitor from retraining
    trigger_at = (run_report(mon, trigger_run) or {})["checked_at"]
    open_checks = [
        r
        for r in judged
        if _seconds(trigger_at, r["checked_at"]) > COOLDOWN and r["window"]["labelled_rows"] >= 100
    ]
    assert len(open_checks) >= 3 and all(r["action"]["action"] == "none" for r in open_checks), [
        r["action"] for r in judged
    ]
    maes = ", ".join(f"{r['performance_vs_baseline']['window_mae']:.3f}" for r in judged[:6])
    print(  # noqa: T201
        f"v{v2} checked {len(judged)}x over {span:.0f}s (cooldown {COOLDOWN:.0f}s) against baseline MAE "
        f"{judged[-1]['performance_vs_baseline']['baseline_mae']:.3f} "
        f"({judged[-1]['performance_vs_baseline']['baseline_rows']} recent rows); window MAE {maes}; "
        f"first check: {first['action']}"
    )

    # the report of the check that triggered retrain 1 tells what happened
    body = run_report(mon, trigger_run)
    assert body is not None
    assert body["action"]["action"] == "retrain_triggered" and body["action"]["job_id"] == job1["id"], body[
        "action"
    ]
    assert body["action"]["job_url"] == f"{stack.trainer}/jobs/{job1['id']}"
    assert body["model_version"] == v1 and body["window"]["first_at"] and body["window"]["last_at"]
    html = mon.get(f"/reports/{trigger_run}")
    assert html.status_code == 200 and "content-security-policy" in html.headers
    head = html.text[: html.text.index("</section>")]
    assert (
        "retrain called" in head
        and job1["id"] in head
        and f'href="{stack.trainer}/jobs/{job1["id"]}"' in head
    )
    assert 'href="../reports"' in head

    # shift B (attendance falls, the old concept returns): v2 degrades against its baseline -> retrain 2
    feeder = Feeder(stack, SHIFT_B).start()
    try:
        jobs = wait_for(
            "the monitor to trigger retrain 2", lambda: len(j := monitor_jobs(tr)) >= 2 and j, timeout=120
        )
        marks["retrain 2 triggered"] = time.monotonic() - t0
    finally:
        feeder.stop()
    assert len(jobs) == 2, jobs
    job2 = jobs[1]
    b2 = run_report(mon, int(job2["monitor_run_id"])) or wait_for(
        "the report of retrain 2's check", lambda: run_report(mon, int(job2["monitor_run_id"])), timeout=30
    )
    assert b2["model_version"] == v2 and b2["action"]["job_id"] == job2["id"], b2["action"]
    assert b2["verdict"]["degraded"] or b2["verdict"]["dataset_drift"], b2["verdict"]
    print("timings (s from the test's start):", {k: round(v, 1) for k, v in marks.items()})  # noqa: T201


def _seconds(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()
