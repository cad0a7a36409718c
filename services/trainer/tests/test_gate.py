"""The approval gate's rule (pure logic, no MLflow) and the promotion-history stack."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from gradeflow_shared.contracts import PromotionEvent
from gradeflow_trainer.gate import decide
from gradeflow_trainer.history import champion_stack, from_compact, rollback_target, to_compact


def m(base: float, recent: float | None = None) -> dict[str, float]:
    out = {"base_holdout_rmse": base}
    if recent is not None:
        out["recent_labelled_rmse"] = recent
    return out


def test_first_model_must_beat_naive_baseline_by_margin() -> None:
    ok = decide(m(1.0), None, m(3.0), margin=0.01, challenger_version=1)
    assert ok.promoted and ok.champion_version is None
    assert ok.champion["naive_base_holdout_rmse"] == 3.0
    assert ok.evaluated_on == ["base_holdout"]
    bad = decide(m(2.98), None, m(3.0), margin=0.01)
    assert not bad.promoted and "naive baseline" in bad.reason


def test_challenger_needs_the_relative_margin_over_the_champion() -> None:
    assert decide(m(0.98), m(1.0), m(3.0), margin=0.01, champion_version=1).promoted  # 2% better
    equal = decide(m(1.0), m(1.0), m(3.0), margin=0.01, champion_version=1)
    assert not equal.promoted and "below the required" in equal.reason
    assert not decide(m(0.995), m(1.0), m(3.0), margin=0.01).promoted  # 0.5% < 1%
    assert decide(m(1.0), m(1.0), m(3.0), margin=0.0).promoted  # margin 0: ties promote
    assert not decide(m(1.2), m(1.0), m(3.0), margin=0.01).promoted


def test_recent_labelled_decides_when_present() -> None:
    # better on recent data but worse on the base holdout; recent data NOT drifted (champion as good there)
    d = decide(m(1.2, 0.9), m(1.0, 1.0), {}, margin=0.01, base_tolerance=0.05, drift_ratio=0.15)
    assert d.evaluated_on == ["base_holdout", "recent_labelled"]
    assert not d.promoted and "not drifted" in d.reason
    # within the base tolerance: promoted
    assert decide(m(1.04, 0.9), m(1.0, 1.0), {}, margin=0.01, base_tolerance=0.05).promoted
    # worse on recent data, better on base: recent decides -> not promoted
    assert not decide(m(0.5, 1.1), m(1.0, 1.0), {}, margin=0.01).promoted


def test_drifted_recent_data_overrides_the_base_holdout() -> None:
    # champion errs far more on recent data (2.3) than on its base holdout (1.0): drifted
    d = decide(m(1.14, 2.0), m(1.0, 2.3), {}, margin=0.01, base_tolerance=0.05, drift_ratio=0.15)
    assert d.promoted, d.reason
    assert "drifted" in d.reason
    assert d.challenger["base_holdout_rmse"] == 1.14 and d.champion["recent_labelled_rmse"] == 2.3
    # but the challenger must still beat the champion on the drifted data
    assert not decide(m(0.9, 2.29), m(1.0, 2.3), {}, margin=0.01).promoted


def test_non_finite_metrics_never_promote() -> None:
    assert not decide(m(math.nan), None, m(3.0), margin=0.01).promoted
    assert not decide(m(math.inf), m(1.0), m(3.0), margin=0.01).promoted
    assert not decide(m(1.0), m(math.nan), m(3.0), margin=0.01).promoted


def _ev(version: int, action: str, prev: int | None = None) -> PromotionEvent:
    return PromotionEvent(
        at=datetime.now(UTC),
        model_name="m",
        version=version,
        previous_version=prev,
        action=action,
        reason="t",
    )  # type: ignore[arg-type]


def test_history_stack_and_rollback_target() -> None:
    assert rollback_target([]) is None
    events = [_ev(1, "gate")]
    assert rollback_target(events) is None
    events += [_ev(2, "gate", 1), _ev(4, "promote", 2)]
    assert champion_stack(events) == [1, 2, 4]
    assert rollback_target(events) == 2
    events.append(_ev(2, "rollback", 4))
    assert champion_stack(events) == [1, 2]
    assert rollback_target(events) == 1
    events.append(_ev(1, "rollback", 2))
    assert rollback_target(events) is None
    # the compact MLflow tag form round-trips the stack
    assert champion_stack(from_compact("m", to_compact(events))) == champion_stack(events)
