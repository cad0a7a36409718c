"""The candidate slot in the inference app: loaded beside the champion, shadow logged against the same
request ids, sticky canary, withdrawn when the state ends, refused when it does not match its manifest."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gradeflow_inference.app import create_app
from gradeflow_shared import manifest as mf
from gradeflow_shared import rollout as ro
from gradeflow_testkit import exports
from gradeflow_testkit.loop import wait_for

wait = functools.partial(wait_for, timeout=20, interval=0.05)


def _start(
    model_dir: Path, fitted: exports.Fitted, stage: str, canary: float = 0.5, run_id: str | None = None
) -> None:
    cand = exports.republish(model_dir, fitted.exports["ridge"], 2, swap_current=False)
    ro.point_candidate(model_dir, cand)
    run = run_id or mf.read_manifest(cand).run_id
    state = ro.RolloutState.begin(
        "r1", "student-grade", (1, "run-rf"), (2, run), ["shadow", "canary"], 1.0, canary
    )
    ro.write_state(model_dir, state.model_copy(update={"stage": stage}))


def test_shadow_logs_both_predictions_and_answers_with_the_champion(
    model_dir: Path, fitted: exports.Fitted, make_settings: Callable[..., Any]
) -> None:
    shadow_story(model_dir, fitted, make_settings(model_dir))


@pytest.mark.postgres
def test_shadow_on_postgresql(
    model_dir: Path, fitted: exports.Fitted, make_settings: Callable[..., Any], postgres_url: str
) -> None:
    shadow_story(model_dir, fitted, make_settings(model_dir, prediction_db_url=postgres_url))


def shadow_story(model_dir: Path, fitted: exports.Fitted, settings: Any) -> None:
    with TestClient(create_app(settings)) as c:
        _start(model_dir, fitted, "shadow")
        wait("the candidate", lambda: c.get("/rollout").json()["active"])
        out = c.post("/predict", json={"records": fitted.records[:5]}).json()
        assert out["model_version"] == 1
        ids = {p["request_id"]: p["prediction"] for p in out["predictions"]}

        def logged() -> list[dict[str, Any]]:
            items = c.get("/predictions", params={"limit": 100}).json()["items"]
            mine = [x for x in items if x["request_id"] in ids and x["shadow_version"] == 2]
            return mine if len(mine) == 5 else []

        rows = wait("shadow rows", logged)
        for x in rows:
            assert (
                x["arm"] == "champion" and x["model_version"] == 1 and x["prediction"] == ids[x["request_id"]]
            )
            assert (
                x["shadow_prediction"] is not None and x["shadow_prediction"] != x["prediction"]
            )  # ridge != rf
        st = c.get("/rollout").json()
        assert st["shadow"]["predicted"] >= 1 and st["arms"]["candidate"]["records"] >= 5
        assert "inference_shadow_predictions_total" in c.get("/metrics").text
        # the rollout ends: the candidate is dropped, the champion alone answers
        state = ro.read_state(model_dir)
        assert state is not None
        ro.write_state(model_dir, state.model_copy(update={"decision": "aborted"}))
        ro.clear_candidate(model_dir)
        wait("the candidate dropped", lambda: not c.get("/rollout").json()["active"])


def test_canary_is_sticky_and_logged_per_record(
    model_dir: Path, fitted: exports.Fitted, make_settings: Callable[..., Any]
) -> None:
    with TestClient(create_app(make_settings(model_dir))) as c:
        _start(model_dir, fitted, "canary", canary=0.5)
        wait("the canary", lambda: (c.get("/rollout").json()["rollout"] or {}).get("stage") == "canary")
        rec = fitted.records[0]
        by_key = {}
        for k in range(40):
            versions = {
                c.post("/predict", json=rec, headers={"X-Rollout-Key": f"s{k}"}).json()["model_version"]
                for _ in range(3)
            }
            assert len(versions) == 1  # sticky
            by_key[f"s{k}"] = versions.pop()
        assert set(by_key.values()) == {1, 2}  # both arms answer at a 50 % share
        assert all((v == 2) == ro.to_candidate(f"h:{k}", 0.5) for k, v in by_key.items())
        out = c.post("/predict", json={"records": fitted.records[:40]})
        arm = out.headers.get("X-Rollout-Arm")
        assert arm == "mixed", arm
        ids = [p["request_id"] for p in out.json()["predictions"]]
        items = {x["request_id"]: x for x in c.get("/predictions", params={"limit": 1000}).json()["items"]}
        arms = {items[i]["arm"] for i in ids}
        assert arms == {"champion", "candidate"}
        assert all(items[i]["model_version"] == (2 if items[i]["arm"] == "candidate" else 1) for i in ids)


def test_candidate_not_matching_the_state_is_refused(
    model_dir: Path, fitted: exports.Fitted, make_settings: Callable[..., Any]
) -> None:
    with TestClient(create_app(make_settings(model_dir))) as c:
        _start(model_dir, fitted, "canary", canary=0.99, run_id="another-run")
        wait("the refusal", lambda: "candidate refused" in (c.get("/rollout").json()["error"] or ""))
        assert not c.get("/rollout").json()["active"]
        assert all(c.post("/predict", json=r).json()["model_version"] == 1 for r in fitted.records[:10])
