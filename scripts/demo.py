"""``make demo``: the closed loop told live in the terminal.

With a rollout mode (``ROLLOUT=shadow+canary make demo`` on a platform it starts) the approved challenger
is followed through its stages, with the monitor's evidence, until the decision.

With the platform running (it starts it with ``scripts/up.py start`` if not), it sends normal
traffic, then drifted traffic with feedback, and follows what happens: drift detected (report
URL) -> retrain job -> version N promoted -> inference reloaded -> MAE on the drifted data before
and after. Works on the synthetic default; on a dataset spec (DATASET=uci-por, ...) it draws the
"normal" and "drifted" traffic from that dataset's rows (drifted = a shifted subset).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from gradeflow_shared import synth
from gradeflow_shared.local_secrets import ensure_local_secrets
from gradeflow_testkit.loop import Urls, mae, predict, send_labelled, to_records, wait_for

REPO = Path(__file__).resolve().parent.parent


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def urls_from_env() -> Urls:
    e = os.environ
    return Urls(
        trainer=e.get("TRAINER_URL", f"http://127.0.0.1:{e.get('TRAINER_PORT', '8001')}"),
        inference=e.get("INFERENCE_URL", f"http://127.0.0.1:{e.get('INFERENCE_PORT', '8000')}"),
        monitor=e.get("MONITOR_URL", f"http://127.0.0.1:{e.get('MONITOR_PORT', '8002')}"),
        mlflow=e.get("MLFLOW_URL", f"http://127.0.0.1:{e.get('MLFLOW_PORT', '5000')}"),
        token=ensure_local_secrets(Path(e.get("DATA_DIR", str(REPO / "data"))).resolve(), dict(e))[0][
            "ADMIN_TOKEN"
        ],
    )


def running(u: Urls) -> bool:
    try:
        return all(
            httpx.get(f"{x}/health", timeout=2).status_code == 200
            for x in (u.trainer, u.inference, u.monitor)
        )
    except httpx.HTTPError:
        return False


def ensure_running(u: Urls) -> int:
    """0 when the platform answers, else start it (scripts/up.py start) and return that exit code."""
    if running(u):
        return 0
    say("the platform is not running: starting it (scripts/up.py start) ...")
    return subprocess.call([sys.executable, str(REPO / "scripts" / "up.py"), "start"])


def traffic_frames(
    dataset: str, dataset_root: str = ""
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    """(normal, drifted, drifted holdout, target) for the demo."""
    if dataset in ("", "synthetic"):
        return (
            synth.generate(600, seed=101),
            synth.generate(1500, seed=202, scenario="concept_study_hours"),
            synth.generate(500, seed=999, scenario="concept_study_hours"),
            synth.TARGET,
        )
    from gradeflow_shared.datasets import load_dataset, load_spec

    spec = load_spec(dataset, data_root=Path(dataset_root) if dataset_root else None)
    X, y, columns = load_dataset(spec)
    from gradeflow_trainer.pipeline import split

    # traffic comes from the trainer's training split only, so the gate's base holdout stays unseen
    X_train, _, y_train, _ = split(X, y, test_size=0.2, seed=0)
    df = X_train.assign(**{spec.target: y_train.to_numpy()})
    rng = np.random.default_rng(0)
    normal = df.sample(n=min(len(df), 400), random_state=1)
    # "drifted": a bootstrap of the rows where a few numeric features moved up by one standard
    # deviation (covariate shift the monitor sees) and the grade fell by a fifth of its range
    # (what the labelled feedback shows); bounds declared in the spec are respected.
    drifted = df.sample(n=max(800, len(df)), replace=True, random_state=2).reset_index(drop=True)
    numeric = [c for c in columns if c.kind == "numeric"][:4]
    for c in numeric:
        col = drifted[c.name].astype(float)
        shifted = col + float(col.std() or 1.0) * (1.0 + 0.1 * rng.random(len(col)))
        if c.max is not None:
            shifted = shifted.clip(upper=c.max)
        drifted[c.name] = shifted.round(0) if c.dtype == "int" else shifted
    span = float(y.max() - y.min()) or 1.0
    drifted[spec.target] = (drifted[spec.target] - 0.2 * span).clip(lower=float(y.min()))
    cut = len(drifted) // 4
    return normal, drifted.iloc[cut:], drifted.iloc[:cut], spec.target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=os.environ.get("DATASET", "synthetic"))
    parser.add_argument("--dataset-root", default=os.environ.get("DATASET_ROOT", ""))
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    u = urls_from_env()
    rc = ensure_running(u)
    if rc != 0:
        return rc
    inf = httpx.Client(base_url=u.inference, timeout=60, headers=u.auth)  # POST /feedback needs the token
    tr = httpx.Client(base_url=u.trainer, timeout=30, headers=u.auth)
    mon = httpx.Client(base_url=u.monitor, timeout=120)

    wait_for("a served model", lambda: inf.get("/ready").status_code == 200, timeout=args.timeout, interval=2)
    m1 = inf.get("/model").json()
    v1 = int(m1["version"])
    say(f"inference serves model version {v1} trained on {m1.get('dataset')}  ({u.inference}/docs)")
    wanted = args.dataset if args.dataset not in ("", "synthetic") else "synthetic"
    if m1.get("dataset") and Path(wanted).stem != m1["dataset"] and wanted != m1["dataset"]:
        say(
            f"the running platform serves a model of {m1['dataset']!r}, not {wanted!r}: stop it (make down), "
            f"then run DATASET={args.dataset} make demo (it starts the platform on that dataset)"
        )
        return 2
    normal, drifted, holdout, target = traffic_frames(args.dataset, args.dataset_root)

    say(f"1/5 sending {len(normal)} normal requests with their true grades ...")
    send_labelled(inf, normal, target)
    check_now(mon)
    d = wait_for(
        "a monitor verdict",
        lambda: mon.get("/drift").json().get("run_id") and mon.get("/drift").json(),
        timeout=120,
    )
    say(
        f"    monitor: drift share {d.get('drift_share')}, dataset drift {d.get('dataset_drift')}, "
        f"degraded {d.get('degraded')}, action {d.get('action')} ({d.get('action_reason')})"
    )

    before = predict(inf, to_records(holdout.drop(columns=[target])))
    mae_before = mae(before.predictions, holdout[target])
    known_jobs = {j["id"] for j in _jobs(tr)}

    say(f"2/5 sending {len(drifted)} drifted requests with their true grades ...")
    send_labelled(inf, drifted, target)
    say("    asking the monitor for a check now (POST /checks) instead of waiting for its schedule ...")
    check_asked = datetime.now(UTC)
    check_now(mon)

    first_flag: dict[str, Any] = {}

    def triggered() -> dict[str, Any] | None:
        dd = mon.get("/drift").json()
        if (
            not first_flag
            and dd.get("run_id") != d.get("run_id")
            and (dd.get("dataset_drift") or dd.get("degraded"))
        ):
            first_flag.update(dd)  # the first check that flagged drift or degradation: time to heal starts
        return dd if dd.get("action") == "retrain_triggered" or dd.get("retrain_job_id") else None

    d = wait_for(
        "the monitor to detect drift and trigger a retrain", triggered, timeout=args.timeout, interval=2
    )
    report = d.get("report_url") or f"{u.monitor}/reports"
    say(
        f"3/5 drift detected: drifted columns {d.get('drifted_columns')}, degraded {d.get('degraded')} "
        f"({d.get('action_reason')})"
    )
    say(f"    report: {report if report.startswith('http') else u.monitor + report}")
    job_id = d.get("retrain_job_id") or next(j["id"] for j in _jobs(tr) if j["id"] not in known_jobs)
    say(f"    retrain job {job_id} started by the monitor ({u.trainer}/jobs/{job_id})")
    last = ""

    def finished() -> dict[str, Any] | None:
        nonlocal last
        j = tr.get(f"/jobs/{job_id}").json()
        line = f"    job {j['state']}: {j.get('stage', '')} {100 * float(j.get('progress') or 0):.0f}%"
        if line != last:
            say(line)
            last = line
        return j if j["state"] in ("succeeded", "failed") else None

    job = wait_for("the retrain job", finished, timeout=args.timeout, interval=1)
    if job["state"] != "succeeded":
        say(f"retrain failed: {job.get('error')}")
        return 1
    res = job["result"]
    dec = res["decision"]
    mode = tr.get("/rollout").json().get("mode", "direct")
    verdict = ("APPROVED: rollout " + mode) if mode != "direct" else "PROMOTED"
    say(f"4/5 version {res['version']} {verdict if dec['promoted'] else 'not promoted'}: {dec['reason']}")
    if not dec["promoted"]:
        return 1
    v2 = int(res["version"])
    if mode != "direct":
        ended = follow_rollout(inf, tr, drifted, target, args.timeout)
        if ended.get("decision") != "promoted":
            say(f"    the champion stays version {v1}; see {u.monitor}/reports/rollouts")
            return 1
    served = wait_for(
        f"inference to load version {v2}",
        lambda: (m := inf.get("/model").json()) and int(m["version"]) == v2 and m,
        timeout=60,
        interval=0.2,
    )
    say(f"    inference reloaded: now serving version {v2}")
    time_to_heal(first_flag or d, check_asked, tr.get(f"/jobs/{job_id}").json(), served)
    after = predict(inf, to_records(holdout.drop(columns=[target])))
    mae_after = mae(after.predictions, holdout[target])
    say(
        f"5/5 MAE on the drifted data: version {v1} {mae_before:.2f} -> version {v2} {mae_after:.2f} "
        f"({(1 - mae_after / mae_before) * 100:.0f}% lower)"
    )
    say(f"    MLflow UI: {u.mlflow}   reports: {u.monitor}/reports")
    return 0


def follow_rollout(
    inf: httpx.Client, tr: httpx.Client, drifted: pd.DataFrame, target: str, timeout: float
) -> dict[str, Any]:
    """Tell a rollout (ROLLOUT != direct) as it goes: labelled traffic of the drifted kind keeps coming,
    and every change of stage and of the monitor's evidence is printed, until the decision."""
    say("    the challenger runs next to the champion; the monitor decides on live labels (GET /rollout)")
    seen: tuple[Any, ...] = ()
    deadline = time.monotonic() + timeout
    k = 0
    while time.monotonic() < deadline:
        r = tr.get("/rollout").json().get("rollout") or {}
        ev = r.get("evidence") or {}
        now = (r.get("stage"), ev.get("n"))
        if now != seen:
            seen = now
            if ev.get("n") is not None:
                say(
                    f"    {r.get('stage')}: {ev.get('n')} labelled comparisons, MAE champion "
                    f"{_fmt(ev.get('champion_mae'))} vs challenger {_fmt(ev.get('candidate_mae'))}, "
                    f"difference interval [{_fmt(ev.get('low'))}, {_fmt(ev.get('high'))}] -> {ev.get('decision')}"
                )
            else:
                say(
                    f"    stage {r.get('stage')} (champion v{r.get('champion_version')}, challenger v{r.get('candidate_version')})"
                )
        if r.get("decision") and r.get("recorded"):
            say(f"    rollout decision: {r['decision'].upper()} ({r.get('reason')})")
            return r  # type: ignore[no-any-return]
        k += 1
        batch = drifted.sample(n=min(20, len(drifted)), replace=True, random_state=k)
        send_labelled(inf, batch, target, batch=20)
        time.sleep(0.25)  # a watchable pace: about 80 labelled requests a second
    raise TimeoutError("the rollout was not decided in time")


def _fmt(v: Any) -> str:
    return f"{v:+.2f}" if isinstance(v, int | float) else "-"


def _at(value: Any) -> datetime | None:
    if not value:
        return None
    t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def time_to_heal(
    flag: dict[str, Any], check_asked: datetime, job: dict[str, Any], model: dict[str, Any]
) -> float | None:
    """Print the timeline from the first flagging check to the new model serving (times from the services:
    the monitor's verdict, the trainer's job, inference's GET /model -> load) and return the total in s."""
    load = model.get("load") or {}
    flagged = _at(flag.get("at"))
    steps = [
        ("check asked (POST /checks)", check_asked),
        ("first flagging check (verdict)", flagged),
        ("retrain job created", _at(job.get("created_at"))),
        ("retrain job started", _at(job.get("started_at"))),
        ("retrain job finished", _at(job.get("finished_at"))),
        ("export swapped (current)", _at(load.get("swapped_at"))),
        ("new model serving", _at(load.get("serving_at"))),
    ]
    say("    time to heal (first flagging check -> new model serving):")
    for what, t in steps:
        if t is not None and flagged is not None:
            say(f"      {what:<31} {t.strftime('%H:%M:%S.%f')[:-3]}  {(t - flagged).total_seconds():+7.1f} s")
    serving = _at(load.get("serving_at"))
    if flagged is None or serving is None:
        say("      (the timeline is incomplete: no verdict time or no serving time in GET /model)")
        return None
    total = (serving - flagged).total_seconds()
    job_s = ""
    started, finished = _at(job.get("started_at")), _at(job.get("finished_at"))
    if started is not None and finished is not None:
        job_s = f"; retrain job {(finished - started).total_seconds():.1f} s"
    say(
        f"    TIME TO HEAL {total:.1f} s (from the check being asked: {(serving - check_asked).total_seconds():.1f} s"
        f"{job_s}; swap -> serving {load.get('swap_to_serving_ms')} ms)"
    )
    return total


def check_now(mon: httpx.Client) -> None:
    """POST /checks (a 409 means a scheduled check is running right now: try again)."""
    wait_for("POST /checks", lambda: mon.post("/checks").status_code != 409, timeout=120)


def _jobs(tr: httpx.Client) -> list[dict[str, Any]]:
    body = tr.get("/jobs").json()
    return body["items"] if isinstance(body, dict) else body


if __name__ == "__main__":
    sys.exit(main())
