"""Every stage transition of a rollout under load: 16 clients hammer /predict, not one request fails.

The four services as real processes (the monitor's scheduler off: the transitions are driven by hand here,
the automatic ones are in tests/e2e/test_rollout.py). ROLLOUT=shadow+canary, PROMOTION_MIN_IMPROVEMENT=0 so
that a retrain on the same data (no labelled rows: the base data alone) is approved and enters the rollout. The story: v1 champion -> retrain: v2 in
shadow (shadow predictions logged against the same request ids) -> canary (sticky by X-Rollout-Key; the
candidate answers its share) -> manual abort (v1 untouched, v2 withdrawn, the reason in /rollout and the
history) -> retrain: v3 in shadow -> canary -> manual promote (v3 champion, served) -> retrain: v4 in shadow
-> a manual ``POST /rollback`` (v4 aborted "by manual rollback", champion back to v1) -> retrain v5 in shadow
-> retrain v6 (v5 superseded) -> a manual ``POST /promote`` of v6 (the rollout finished as promoted).
Meanwhile 16 threads send single-record requests; every answer must be 2xx.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gradeflow_shared import synth
from gradeflow_testkit.loop import Urls, to_records, wait_for
from gradeflow_testkit.stack import running_stack

pytestmark = pytest.mark.integration

CLIENTS = 16


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Urls]:
    data_dir = tmp_path_factory.mktemp("rollout-traffic")
    with running_stack(
        data_dir,
        {
            "DATASET": "synthetic",
            "TRAIN_SEARCH": "false",
            "ROLLOUT": "shadow+canary",
            "ROLLOUT_CANARY_SHARE": "0.5",
            "PROMOTION_MIN_IMPROVEMENT": "0",
            "SCHEDULER_ENABLED": "false",
            "RELOAD_INTERVAL": "0.2",
        },
    ) as urls:
        yield urls


class Hammer:
    """``CLIENTS`` threads sending one record at a time, each with its own sticky key; counts non-2xx."""

    def __init__(self, base_url: str, records: list[dict[str, Any]]) -> None:
        self.base_url, self.records = base_url, records
        self.sent = 0
        self.failures: list[str] = []
        self.arms: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(CLIENTS)]

    def _run(self, k: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30, headers={"X-Rollout-Key": f"client-{k}"}) as c:
            i = k
            while not self._stop.is_set():
                try:
                    r = c.post("/predict", json=self.records[i % len(self.records)])
                    bad = None if 200 <= r.status_code < 300 else f"HTTP {r.status_code}: {r.text[:200]}"
                    arm = r.headers.get("X-Rollout-Arm", "champion")
                except httpx.HTTPError as exc:
                    bad, arm = f"{exc.__class__.__name__}: {exc}", "none"
                with self._lock:
                    self.sent += 1
                    self.arms[arm] = self.arms.get(arm, 0) + 1
                    if bad:
                        self.failures.append(bad)
                i += CLIENTS

    def __enter__(self) -> Hammer:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=35)


def _retrain(tr: httpx.Client) -> dict[str, Any]:
    r = tr.post("/retrain", json={"reason": "rollout traffic test"})
    assert r.status_code in (200, 202), r.text
    job_id = r.json()["id"]
    done = wait_for(
        "the retrain",
        lambda: (j := tr.get(f"/jobs/{job_id}").json())["state"] in ("succeeded", "failed") and j,
        timeout=300,
        interval=1,
    )
    assert done["state"] == "succeeded", done
    return done  # type: ignore[no-any-return]


def _served(inf: httpx.Client) -> dict[str, Any]:
    return inf.get("/rollout").json()  # type: ignore[no-any-return]


def test_stage_transitions_under_16_clients(platform: Urls) -> None:
    inf = httpx.Client(base_url=platform.inference, timeout=60, headers=platform.auth)
    tr = httpx.Client(base_url=platform.trainer, timeout=120, headers=platform.auth)
    wait_for("inference ready", lambda: inf.get("/ready").status_code == 200, timeout=600, interval=1)
    v1 = int(inf.get("/model").json()["version"])
    records = to_records(synth.generate(400, seed=5).drop(columns=[synth.TARGET]))

    # the controls: 401 without the token, 409 without a rollout, 422 naming the field
    assert httpx.post(f"{platform.trainer}/rollout/abort").status_code == 401
    assert tr.post("/rollout/abort", json={"reason": "x"}).status_code == 409
    bad = tr.post("/rollout/stage", json={"stage": "full-speed"})
    assert bad.status_code == 422 and "stage" in bad.text, bad.text

    with Hammer(platform.inference, records) as load:
        # v2 enters shadow; the champion keeps answering
        done = _retrain(tr)
        v2 = int(done["result"]["version"])
        ro = tr.get("/rollout").json()
        assert done["result"]["decision"]["promoted"], done["result"]["decision"]
        assert ro["active"] and ro["rollout"]["stage"] == "shadow", ro
        assert (ro["rollout"]["champion_version"], ro["rollout"]["candidate_version"]) == (v1, v2)
        wait_for("inference to load the candidate", lambda: _served(inf)["active"], timeout=60)
        wait_for("shadow predictions", lambda: _served(inf)["shadow"]["predicted"] > 20, timeout=60)
        out = inf.post("/predict", json=records[0]).json()
        assert out["model_version"] == v1
        rid = out["predictions"][0]["request_id"]
        row = wait_for("the shadowed row in the log", lambda: _find(inf, rid, v2), timeout=30)
        assert (
            row["arm"] == "champion" and row["model_version"] == v1 and row["shadow_prediction"] is not None
        )

        # canary: the candidate answers its share, sticky per key
        assert (
            tr.post("/rollout/stage", json={"stage": "canary", "reason": "test"}).json()["rollout"]["stage"]
            == "canary"
        )
        wait_for(
            "the canary stage in inference", lambda: _served(inf)["rollout"]["stage"] == "canary", timeout=30
        )
        time.sleep(1.0)
        sticky = {
            inf.post("/predict", json=records[1], headers={"X-Rollout-Key": "same"}).json()["model_version"]
            for _ in range(8)
        }
        assert len(sticky) == 1, sticky
        arms = wait_for(
            "both arms answering",
            lambda: (a := _served(inf)["arms"])["candidate"]["records"] > 20 and a,
            timeout=30,
        )
        assert arms["champion"]["records"] > 20, arms

        # manual abort: v1 untouched, v2 withdrawn, the reason recorded
        ab = tr.post("/rollout/abort", json={"reason": "manual abort in the traffic test"}).json()
        assert ab["rollout"]["decision"] == "aborted" and not ab["active"], ab
        wait_for("inference to drop the candidate", lambda: not _served(inf)["active"], timeout=30)
        assert int(inf.get("/model").json()["version"]) == v1
        hist = tr.get("/history").json()
        assert hist[-1]["action"] == "rollout_abort" and "manual abort" in hist[-1]["reason"], hist[-1]
        assert tr.get("/model").json()["version"] == v1

        # v3: shadow -> canary -> promote, still under load
        v3 = int(_retrain(tr)["result"]["version"])
        wait_for(
            "inference to load v3",
            lambda: (_served(inf)["rollout"] or {}).get("candidate_version") == v3,
            timeout=60,
        )
        tr.post("/rollout/stage", json={"stage": "canary"}).raise_for_status()
        time.sleep(1.0)
        pr = tr.post("/rollout/promote", json={"reason": "manual promotion in the traffic test"})
        assert pr.status_code == 200 and pr.json()["rollout"]["decision"] == "promoted", pr.text
        wait_for(
            f"inference to serve v{v3}", lambda: int(inf.get("/model").json()["version"]) == v3, timeout=60
        )
        assert tr.get("/model").json()["version"] == v3

        # a manual champion change during a rollout ends the rollout first, as one step:
        # rollback while v4 is in shadow -> v4 aborted (reason recorded), champion back to v1
        v4 = int(_retrain(tr)["result"]["version"])
        wait_for(
            "inference to load v4",
            lambda: (_served(inf)["rollout"] or {}).get("candidate_version") == v4,
            timeout=60,
        )
        rb = tr.post("/rollback", json={"reason": "rollback during a rollout"})
        assert rb.status_code == 200, rb.text
        assert (rb.json()["version"], rb.json()["previous_version"]) == (v1, v3), rb.json()
        ended = rb.json()["rollout"]
        assert (ended["candidate_version"], ended["decision"]) == (v4, "aborted"), ended
        assert ended["reason"].startswith(f"aborted by manual rollback to v{v1}"), ended
        ro = tr.get("/rollout").json()
        assert not ro["active"] and ro["rollout"]["reason"] == ended["reason"], ro
        assert [(e["action"], e["version"]) for e in tr.get("/history").json()[-2:]] == [
            ("rollout_abort", v4),
            ("rollback", v1),
        ]
        tags = _mlflow_tags(platform, v4)
        assert tags["rollout.decision"] == "aborted" and "manual rollback" in tags["rollout.reason"], tags
        wait_for("inference to drop v4 and serve v1", lambda: _serving(inf) == (v1, False), timeout=60)

        # a retrain during a rollout supersedes it; a manual /promote of the candidate finishes it
        v5 = int(_retrain(tr)["result"]["version"])
        v6 = int(_retrain(tr)["result"]["version"])
        old = [e for e in tr.get("/history").json() if e["version"] == v5][-1]
        assert old["action"] == "rollout_abort" and f"superseded by v{v6}" in old["reason"], old
        assert tr.get("/rollout").json()["rollout"]["candidate_version"] == v6
        wait_for(
            "inference to load v6",
            lambda: (_served(inf)["rollout"] or {}).get("candidate_version") == v6,
            timeout=60,
        )
        pm = tr.post("/promote", json={"version": v6, "reason": "promote the candidate by hand"})
        assert pm.status_code == 200, pm.text
        assert pm.json()["rollout"]["decision"] == "promoted", pm.json()
        assert pm.json()["event"]["action"] == "rollout_promote", pm.json()
        assert tr.get("/model").json()["version"] == v6 and not tr.get("/rollout").json()["active"]
        wait_for(f"inference to serve v{v6} alone", lambda: _serving(inf) == (v6, False), timeout=60)
        time.sleep(1.0)
    print(f"rollout traffic: {load.sent} requests, arms {load.arms}, failures {len(load.failures)}")
    assert load.sent > 500
    assert load.failures == [], load.failures[:5]
    assert load.arms.get("candidate", 0) + load.arms.get("mixed", 0) > 0  # the canary really answered


def _serving(inf: httpx.Client) -> tuple[int, bool]:
    """(the version inference serves, whether it still holds a candidate)."""
    return int(inf.get("/model").json()["version"]), bool(_served(inf)["active"])


def _mlflow_tags(platform: Urls, version: int) -> dict[str, str]:
    r = httpx.get(
        f"{platform.mlflow}/api/2.0/mlflow/model-versions/get",
        params={"name": "student-grade", "version": str(version)},
        timeout=30,
    )
    r.raise_for_status()
    return {t["key"]: t["value"] for t in r.json()["model_version"].get("tags", [])}


def _find(inf: httpx.Client, rid: str, version: int) -> dict[str, Any] | None:
    """The logged row of request ``rid`` once its shadow prediction by ``version`` is stored."""
    cursor = 0
    while True:
        page = inf.get("/predictions", params={"limit": 1000, "since_id": cursor}).json()
        for x in page["items"]:
            if x["request_id"] == rid:
                return x if x["shadow_version"] == version else None
        if page["next_since_id"] is None:
            return None
        cursor = page["next_since_id"]
