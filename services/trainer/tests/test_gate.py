"""The approval gate's rule (pure logic, no MLflow) and the promotion-history stack."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from gradeflow_shared.contracts import PromotionEvent
from gradeflow_trainer.gate import BASE, RECENT, decide, decision_tags, labels_needed, paired_interval
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


def e(mae_chal: float, mae_champ: float, n: int, noise: float = 0.0, seed: int = 0) -> tuple[Any, Any]:
    """Synthetic per-row |errors|: the champion's around ``mae_champ``, the challenger's ``mae_chal``
    on average, with per-row noise of SD ``noise`` on the difference."""
    rng = np.random.default_rng(seed)
    champ = rng.uniform(0.5, 1.5, n) * mae_champ
    diff = (mae_champ - mae_chal) + rng.normal(0.0, noise, n)
    diff -= diff.mean() - (mae_champ - mae_chal)  # the observed gain is exactly the intended one
    return champ - diff, champ


def mm(base: tuple[float, float], recent: tuple[float, float] | None = None) -> dict[str, float]:
    out = {"base_holdout_mae": base[0], "base_holdout_rmse": base[1]}
    if recent is not None:
        out.update(recent_labelled_mae=recent[0], recent_labelled_rmse=recent[1])
    return out


def vs_champion(chal: dict[str, float], champ: dict[str, float], errors: Any, **kw: Any) -> Any:
    """The gate's verdict on ``chal`` against champion v1 (margin 1%, GATE_MIN_ROWS 100)."""
    return decide(chal, champ, {}, margin=0.01, errors=errors, min_rows=100, champion_version=1, **kw)


def test_clear_gain_with_enough_rows_promotes_and_records_the_evidence() -> None:
    errors = {RECENT: e(1.6, 2.0, 200, noise=0.5), BASE: e(1.0, 1.0, 150, noise=0.3)}
    d = vs_champion(mm((1.0, 1.3), (1.6, 2.1)), mm((1.0, 1.3), (2.0, 2.5)), errors, challenger_version=2)
    assert d.promoted, d.reason
    assert d.deciding_set == RECENT and d.rows == 200 and d.min_rows == 100 and d.metric == "mae"
    assert d.effect == pytest.approx(0.4) and 0 < d.effect_low < 0.4 < d.effect_high  # type: ignore[operator]
    assert "bootstrap" in d.test and d.more_labels_needed is None
    # both populations' errors, for both models, are in the decision and its tags
    assert d.champion["base_holdout_mae"] == 1.0 and d.challenger["recent_labelled_mae"] == 1.6
    assert (
        "base_holdout MAE 1.0000 -> 1.0000" in d.reason and "recent_labelled MAE 2.0000 -> 1.6000" in d.reason
    )
    tags = decision_tags(d)
    assert tags["gate.rows"] == "200" and tags["gate.effect"] == "0.4"
    assert tags["gate.mae.base_holdout"] == "champion 1.0000, challenger 1.0000"
    assert tags["gate.mae.recent_labelled"] == "champion 2.0000, challenger 1.6000"
    assert tags["gate.effect_interval"].startswith("[")


def test_small_noisy_gain_keeps_the_champion_and_says_how_many_labels_are_needed() -> None:
    errors = {RECENT: e(1.94, 2.0, 150, noise=1.0), BASE: e(1.0, 1.0, 150)}
    d = vs_champion(mm((1.0, 1.3), (1.94, 2.4)), mm((1.0, 1.3), (2.0, 2.5)), errors)
    assert not d.promoted and "interval reaches zero" in d.reason
    assert d.effect_low is not None and d.effect_low <= 0 < d.effect  # type: ignore[operator]
    # sd 1.0, gain 0.06: (1.96 * 1.0 / 0.06)^2 ~ 1067 rows in total, 150 there
    assert d.more_labels_needed is not None and 800 < d.more_labels_needed < 1100
    assert f"needs ≈{d.more_labels_needed} more labels" in d.reason
    assert decision_tags(d)["gate.more_labels_needed"] == str(d.more_labels_needed)


def test_too_few_recent_rows_keep_the_champion_even_with_a_clear_gain() -> None:
    errors = {RECENT: e(1.0, 2.0, 71, noise=0.3), BASE: e(1.0, 1.0, 150)}
    d = vs_champion(mm((1.0, 1.3), (1.0, 1.3)), mm((1.0, 1.3), (2.0, 2.5)), errors)
    assert not d.promoted and "only 71 recent labelled rows (GATE_MIN_ROWS=100)" in d.reason
    assert d.more_labels_needed == 29 and d.rows == 71 and d.effect == pytest.approx(1.0)


def test_gain_below_the_margin_and_a_worse_challenger_keep_the_champion() -> None:
    tiny = vs_champion(mm((0.995, 1.3)), mm((1.0, 1.3)), {BASE: e(0.995, 1.0, 5000)})
    assert not tiny.promoted and "below the required" in tiny.reason
    worse = vs_champion(mm((1.2, 1.5)), mm((1.0, 1.3)), {BASE: e(1.2, 1.0, 300, noise=0.2)})
    assert not worse.promoted and worse.effect is not None and worse.effect < 0
    # without the rows of both models nothing is promoted
    assert not vs_champion(mm((0.5, 0.6)), mm((1.0, 1.3)), None).promoted


def test_base_holdout_guard_unless_the_recent_data_is_drifted() -> None:
    errors = {RECENT: e(0.9, 1.0, 400, noise=0.2), BASE: e(1.2, 1.0, 150)}
    # not drifted (champion as good on recent data as on base), challenger much worse on base: kept
    d = vs_champion(
        mm((1.2, 1.5), (0.9, 1.2)), mm((1.0, 1.3), (1.0, 1.3)), errors, base_tolerance=0.05, drift_ratio=0.15
    )
    assert not d.promoted and "not drifted" in d.reason
    # drifted (champion errs far more on recent data): promoted, and the trade-off is spelled out
    errors = {RECENT: e(1.8, 2.3, 400, noise=0.3), BASE: e(1.14, 1.0, 150)}
    d = vs_champion(
        mm((1.14, 1.4), (1.8, 2.2)), mm((1.0, 1.3), (2.3, 2.8)), errors, base_tolerance=0.05, drift_ratio=0.15
    )
    assert d.promoted and "drifted" in d.reason, d.reason
    assert "base_holdout MAE 1.0000 -> 1.1400 (-14.0%)" in d.reason


def test_labels_needed_estimate() -> None:
    rng = np.random.default_rng(1)
    diff = rng.normal(0.1, 1.0, 200)
    diff += 0.1 - diff.mean()
    need = labels_needed(diff)
    assert need is not None and abs(need + 200 - (1.96 * diff.std(ddof=1) / 0.1) ** 2) < 2
    assert labels_needed(-diff) is None
    assert labels_needed(np.full(50, 0.5), min_rows=100) == 50
    mean, lo, hi = paired_interval(diff)
    assert lo < mean < hi and mean == pytest.approx(0.1)


def test_non_finite_metrics_never_promote() -> None:
    assert not decide(m(math.nan), None, m(3.0), margin=0.01).promoted
    ok = {BASE: e(0.9, 1.0, 300)}
    assert not decide(m(math.inf), m(1.0), m(3.0), margin=0.01, errors=ok).promoted


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
