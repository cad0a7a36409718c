"""The rollout's sequential test: its error rates and power, measured by simulation.

The monitor looks at the evidence after every check, so the test is run the same way here: a decision is
taken at every 10th comparison up to 600. The stated rates (``sequential``'s docstring) are alpha / 2 for a
false promotion (challenger worse by the margin) and for a false rollback (challenger as good); the
simulation uses heavy-tailed (Laplace) differences, where the plug-in variance is least exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradeflow_monitor.config import MonitorSettings
from gradeflow_monitor.rollout import differences, guard
from gradeflow_monitor.sequential import decide

ALPHA, MARGIN, SIMS = 0.05, 0.25, 400


def outcomes(mu: float, seed: int, scale: float = 1.0, nmax: int = 600, step: int = 10) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    out = {"promote": 0, "rollback": 0, "continue": 0}
    for _ in range(SIMS):
        d = mu + rng.laplace(0.0, scale, nmax)
        act = "continue"
        for n in range(step, nmax + 1, step):
            v = decide(d[:n], alpha=ALPHA, margin=MARGIN, min_pairs=30)
            if v.action != "continue":
                act = v.action
                break
        out[act] += 1
    return {k: v / SIMS for k, v in out.items()}


def test_false_promotion_rate_at_the_margin() -> None:
    # a challenger worse by exactly the margin (the hardest worse case): promoted at most alpha/2 (+ 2 SE)
    rate = outcomes(-MARGIN, seed=1)["promote"]
    assert rate <= ALPHA / 2 + 2 * np.sqrt(ALPHA / 2 / SIMS), rate


def test_false_rollback_rate_of_an_equal_challenger() -> None:
    rate = outcomes(0.0, seed=2)["rollback"]
    assert rate <= ALPHA / 2 + 2 * np.sqrt(ALPHA / 2 / SIMS), rate


def test_power_better_and_worse() -> None:
    assert outcomes(0.4, seed=3)["promote"] >= 0.95  # a drift-healed challenger is promoted
    assert outcomes(-0.8, seed=4)["rollback"] >= 0.95  # a clearly worse one is rolled back


def test_too_few_pairs_never_decide() -> None:
    v = decide(np.full(29, 5.0), min_pairs=30)
    assert v.action == "continue" and "29 of 30" in v.reason
    assert decide(np.array([np.nan, np.inf] * 40), min_pairs=30).action == "continue"


def _row(i: int, **kw: object) -> object:
    from datetime import UTC, datetime

    from gradeflow_shared.contracts import LoggedPrediction

    base = {"id": i, "request_id": f"r{i}", "ts": datetime.now(UTC), "features": {}, "latency_ms": 1.0}
    return LoggedPrediction.model_validate({**base, **kw})


def test_differences_pair_shadow_on_the_same_request_and_canary_by_arm() -> None:
    ro = {"champion_version": 1, "candidate_version": 2, "stage": "shadow"}
    rows = [
        _row(1, model_version=1, prediction=10.0, actual=12.0, shadow_version=2, shadow_prediction=11.5),
        _row(2, model_version=1, prediction=10.0, actual=None, shadow_version=2, shadow_prediction=11.5),
        _row(3, model_version=1, prediction=10.0, actual=10.0),  # not shadowed
        _row(4, model_version=1, prediction=9.0, actual=10.0, shadow_version=3, shadow_prediction=10.0),
    ]
    d, s = differences(rows, ro)  # type: ignore[arg-type]
    assert d.tolist() == [1.5] and s["champion_mae"] == 2.0 and s["candidate_mae"] == 0.5
    rows = [
        _row(1, model_version=1, prediction=10.0, actual=12.0),
        _row(2, model_version=2, arm="candidate", prediction=12.5, actual=12.0),
        _row(3, model_version=1, prediction=10.0, actual=11.0),
    ]
    d, s = differences(rows, {**ro, "stage": "canary"})  # type: ignore[arg-type]
    assert d.tolist() == [1.5] and (s["champion_labelled"], s["candidate_labelled"]) == (2, 1)


@pytest.mark.parametrize(
    ("cand", "why"),
    [
        (
            {"records": 500, "errors": 50, "error_rate": 0.1, "latency_samples": 500, "p99_ms": 1.0},
            "error rate",
        ),
        ({"records": 500, "errors": 0, "error_rate": 0.0, "latency_samples": 500, "p99_ms": 90.0}, "p99"),
        ({"records": 500, "errors": 0, "error_rate": 0.0, "latency_samples": 500, "p99_ms": 2.0}, None),
        ({"records": 10, "errors": 10, "error_rate": 1.0, "latency_samples": 10, "p99_ms": 900.0}, None),
    ],
)
def test_guard(cand: dict[str, float], why: str | None) -> None:
    champ = {"records": 5000, "errors": 0, "error_rate": 0.0, "latency_samples": 2000, "p99_ms": 1.0}
    s = MonitorSettings(admin_token="x" * 20)
    got = guard({"champion": champ, "candidate": cand}, s)
    assert (got is None) if why is None else (got is not None and why in got)
