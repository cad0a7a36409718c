"""Progressive delivery decided on live labels, end to end, without anyone calling a rollout endpoint.

The four services as local processes, ROLLOUT=shadow+canary, the monitor judging the rollout every second.
The test only sends prediction traffic and its labels (what users and labellers do):

1. drifted traffic with labels -> the monitor triggers a retrain -> v2 enters **shadow** next to v1;
2. the world goes back to the original relation: on these labels v2 is the worse model -> the monitor's
   sequential test **rolls it back**: v1 untouched and still served, the reason in the trainer's
   ``GET /rollout``, its history and the MLflow tags of v2;
3. drifted traffic again -> a new retrain -> v3 in shadow -> **canary** -> **promoted**: the registry's
   champion alias and inference's model are v3, by themselves.

ROLLOUT_MARGIN=0 here: a challenger is promoted only when it is significantly better on the live labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pandas as pd
import pytest

from gradeflow_shared import synth
from gradeflow_testkit.loop import Urls, send_labelled, wait_for
from gradeflow_testkit.stack import running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SCENARIO = "concept_study_hours"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Urls]:
    data_dir = tmp_path_factory.mktemp("e2e-rollout")
    with running_stack(
        data_dir,
        {
            "DATASET": "synthetic",
            "TRAIN_SEARCH": "false",
            "ROLLOUT": "shadow+canary",
            "ROLLOUT_CANARY_SHARE": "0.5",
            "ROLLOUT_MARGIN": "0",
            "ROLLOUT_MIN_PAIRS": "30",
            "ROLLOUT_INTERVAL_SECONDS": "1",
            "CHECK_INTERVAL_SECONDS": "2",
            "WINDOW_SIZE": "600",
            "MIN_WINDOW_ROWS": "200",
            "MIN_LABELLED_ROWS": "200",
            "RETRAIN_COOLDOWN_SECONDS": "5",
        },
    ) as urls:
        yield urls


class Traffic:
    """Labelled prediction traffic of one scenario, a batch at a time, until a condition holds."""

    def __init__(self, inf: httpx.Client, auth: dict[str, str]) -> None:
        self.inf, self.auth, self.seed = inf, auth, 1000

    def until(self, what: str, cond: Callable[[], Any], scenario: str | None, timeout: float = 150) -> Any:
        def step() -> Any:
            got = cond()
            if got:
                return got
            self.seed += 1
            df: pd.DataFrame = synth.generate(100, seed=self.seed, scenario=scenario)
            send_labelled(self.inf, df, synth.TARGET, batch=50, headers=self.auth)
            return None

        return wait_for(what, step, timeout=timeout, interval=0.1)


def _rollout(tr: httpx.Client) -> dict[str, Any]:
    return tr.get("/rollout").json()  # type: ignore[no-any-return]


def _mlflow_tags(platform: Urls, version: int) -> dict[str, str]:
    r = httpx.get(
        f"{platform.mlflow}/api/2.0/mlflow/model-versions/get",
        params={"name": "student-grade", "version": str(version)},
        timeout=30,
    )
    r.raise_for_status()
    return {t["key"]: t["value"] for t in r.json()["model_version"].get("tags", [])}


def test_rollout_decided_on_live_labels(platform: Urls) -> None:
    inf = httpx.Client(base_url=platform.inference, timeout=60, headers=platform.auth)
    tr = httpx.Client(base_url=platform.trainer, timeout=60)
    wait_for("inference ready", lambda: inf.get("/ready").status_code == 200, timeout=600, interval=1)
    v1 = int(inf.get("/model").json()["version"])
    traffic = Traffic(inf, platform.auth)

    def candidate_in(stage: str, other_than: int | None = None) -> dict[str, Any] | None:
        r = _rollout(tr)
        ro = r["rollout"]
        if r["active"] and ro["stage"] == stage and ro["candidate_version"] != other_than:
            return ro  # type: ignore[no-any-return]
        return None

    # 1. drift -> retrain -> v2 in shadow, v1 still the champion
    ro = traffic.until("a challenger in shadow", lambda: candidate_in("shadow"), SCENARIO, timeout=240)
    v2 = ro["candidate_version"]
    assert ro["champion_version"] == v1 and v2 > v1, ro
    assert tr.get("/model").json()["version"] == v1

    # 2. the labels follow the original relation again: v2 is worse there -> rolled back by the monitor
    ended = traffic.until(
        "the worse challenger rolled back (and recorded)",
        lambda: (r := _rollout(tr))["rollout"]["recorded"] and r,
        None,
    )
    ro = ended["rollout"]
    assert (ro["candidate_version"], ro["decision"]) == (v2, "rolled_back"), ro
    assert "worse" in ro["reason"] and ro["evidence"]["high"] < 0, ro
    assert tr.get("/model").json()["version"] == v1  # the registry's champion untouched
    assert int(inf.get("/model").json()["version"]) == v1  # and served
    wait_for("inference to drop the candidate", lambda: not inf.get("/rollout").json()["active"], timeout=30)
    last = tr.get("/history").json()[-1]
    assert (last["action"], last["version"]) == ("rollout_rollback", v2) and "worse" in last["reason"], last
    tags = _mlflow_tags(platform, v2)  # written before the state says "recorded"
    assert tags["rollout.decision"] == "rolled_back" and "worse" in tags["rollout.reason"], tags

    # 3. drift again -> v3 in shadow -> canary -> promoted, by itself
    ro = traffic.until(
        "a new challenger in shadow", lambda: candidate_in("shadow", v2), SCENARIO, timeout=240
    )
    v3 = ro["candidate_version"]
    traffic.until("the canary stage", lambda: candidate_in("canary"), SCENARIO)
    ro = traffic.until(
        "the promotion (recorded)", lambda: (r := _rollout(tr)["rollout"])["recorded"] and r, SCENARIO
    )
    assert tr.get("/model").json()["version"] == v3
    assert (ro["candidate_version"], ro["decision"]) == (v3, "promoted"), ro
    wait_for(f"inference to serve v{v3}", lambda: int(inf.get("/model").json()["version"]) == v3, timeout=60)
    actions = [(e["action"], e["version"]) for e in tr.get("/history").json() if e["version"] == v3]
    assert actions == [("rollout_start", v3), ("rollout_stage", v3), ("rollout_promote", v3)], actions
    assert _mlflow_tags(platform, v3)["rollout.decision"] == "promoted"
    # the monitor's rollout page shows both models' errors and the decision
    page = httpx.get(f"{platform.monitor}/reports/rollouts/{ro['rollout_id']}", timeout=30)
    assert page.status_code == 200 and f"v{v3}" in page.text and "promote" in page.text, page.text[:500]
