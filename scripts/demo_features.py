"""``make demo-features``: a student's term streamed into the feature store, the prediction moving with it.

With the platform running (started with ``scripts/up.py start`` if not), a new student arrives: their
profile (age, school, family ...) is sent to POST /readings, and predicting by their id answers 422
naming the activity features nobody has reported yet. Then a term of weekly readings from the synthetic
generator (attendance, absences, study-hour and sleep surveys, posted term grades) is sent one week at a
time; after each, POST /predict {"student_id": ...} shows the predicted final grade as the store knows
the student now. At the end, the generator's true final grade for comparison.

    python -m scripts.demo_features [--seed 3] [--pause 0.5]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from gradeflow_shared.synth import TARGET, generate_term
from gradeflow_testkit.loop import to_records, wait_for
from scripts.demo import ensure_running, say, urls_from_env

SHOWN = ("attendance_pct", "absences", "study_hours_per_week", "term_grade")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _send(inf: httpx.Client, reading: dict[str, Any]) -> None:
    r = inf.post("/readings", json={"readings": [reading]})
    if r.status_code != 200:
        raise RuntimeError(f"POST /readings refused: {r.status_code} {r.text[:500]}")


def _pending(inf: httpx.Client) -> float:
    for line in inf.get("/metrics").text.splitlines():
        if line.startswith("inference_feature_readings_pending "):
            return float(line.split()[1])
    return math.nan


def _online(inf: httpx.Client) -> None:
    """Wait until every accepted reading is in the online store (the materializer pushes within seconds)."""
    wait_for("the readings to reach the online store", lambda: _pending(inf) == 0, timeout=120, interval=0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=3, help="which synthetic student (generator seed)")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between weeks")
    args = ap.parse_args()
    u = urls_from_env()
    rc = ensure_running(u)
    if rc != 0:
        return rc
    inf = httpx.Client(base_url=u.inference, timeout=60, headers=u.auth)  # POST /readings needs the token
    wait_for("a served model", lambda: inf.get("/ready").status_code == 200, timeout=900, interval=2)
    say(f"inference serves model version {inf.get('/model').json()['version']}  ({u.inference}/docs)")

    term = generate_term(1, seed=args.seed)
    sid = f"DEMO-{args.seed}-{int(time.time())}"
    profile = to_records(term.profile.drop(columns=["student_id", "event_timestamp"]))[0]
    _send(inf, {"student_id": sid, "event_timestamp": _now(), **profile})
    _online(inf)
    say(
        f"new student {sid}: profile sent ({', '.join(f'{k}={v}' for k, v in list(profile.items())[:4])}, ...)"
    )
    r = inf.post("/predict", json={"student_id": sid})
    say(f"predict by id before any activity reading: {r.status_code} {r.json().get('message', '')[:160]}")

    weeks = to_records(term.activity.drop(columns=["student_id", "event_timestamp"]))
    for week, reading in enumerate(weeks, start=1):
        # dated now: each week's reading arrives as it happens (the store keeps the latest per student)
        _send(inf, {"student_id": sid, "event_timestamp": _now(), **reading})
        _online(inf)
        r = inf.post("/predict", json={"student_id": sid})
        if r.status_code != 200:
            say(f"week {week:2d}: predict by id answered {r.status_code} {r.text[:200]}")
            return 1
        shown = "  ".join(f"{k}={reading[k]}" for k in SHOWN if reading.get(k) is not None)
        say(
            f"week {week:2d}: {shown:<80s} -> predicted final grade {r.json()['predictions'][0]['prediction']:.2f}"
        )
        time.sleep(args.pause)
    truth = float(term.labels[TARGET].iloc[0])
    say(f"end of term: the generator's true final grade for {sid} is {truth:.2f}")
    lag = [
        ln
        for ln in inf.get("/metrics").text.splitlines()
        if ln.startswith("inference_feature_") and "_created" not in ln
    ]
    say("feature store on /metrics: " + "; ".join(lag[:6]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
