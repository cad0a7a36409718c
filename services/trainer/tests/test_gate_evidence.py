"""The gate's evidence rule on the recent labelled rows: paired bootstrap interval, minimum rows,
labels needed, both populations' errors (pure logic, no MLflow)."""

from __future__ import annotations

import math
import time

import numpy as np

from gradeflow_trainer.gate import BaseHoldout, Paired, bootstrap_interval, champion_base, decide


def _rmse(e: np.ndarray) -> float:
    return float(np.sqrt(np.mean(e**2)))


def case(
    n: int, *, champ_sd: float, chal_sd: float, corr: float = 0.0, seed: int = 0
) -> tuple[Paired, dict[str, float], dict[str, float]]:
    """Recent rows where the champion errs with sd ``champ_sd`` and the challenger with ``chal_sd``
    (errors correlated by ``corr``); both models equal (1.0) on the base holdout, so not drifted
    unless the champion's recent error exceeds it."""
    rng = np.random.default_rng(seed)
    y = rng.normal(10, 3, n)
    e_champ = rng.normal(0, champ_sd, n)
    e_chal = corr * e_champ / champ_sd * chal_sd + math.sqrt(1 - corr**2) * rng.normal(0, chal_sd, n)
    p = Paired(y=y, challenger=y + e_chal, champion=y + e_champ)
    chal = {"base_holdout_rmse": 1.0, "recent_labelled_rmse": _rmse(e_chal), "recent_labelled_mae": 0.5}
    champ = {"base_holdout_rmse": 1.0, "recent_labelled_rmse": _rmse(e_champ)}
    return p, chal, champ


def test_clear_win_on_enough_rows_is_promoted_with_its_evidence() -> None:
    p, chal, champ = case(300, champ_sd=1.0, chal_sd=0.6, seed=1)
    d = decide(chal, champ, {}, margin=0.01, paired=p, min_rows=100, champion_version=1, drift_ratio=0.15)
    assert d.promoted, d.reason
    assert d.method == "paired-bootstrap" and d.rows == 300 and d.min_rows == 100 and d.labels_needed is None
    assert d.effect is not None and d.effect_low is not None and d.effect_high is not None
    assert d.effect_low <= d.effect <= d.effect_high < 0 and d.confidence == 0.95 and d.resamples == 2000
    # the effect is the mean per-row squared-error difference, the relative effect the RMSE gain
    diff = (p.challenger - p.y) ** 2 - (p.champion - p.y) ** 2
    assert math.isclose(d.effect, float(diff.mean()))
    assert d.effect_relative is not None and math.isclose(
        d.effect_relative, 1 - chal["recent_labelled_rmse"] / champ["recent_labelled_rmse"]
    )
    assert d.p_value is not None and d.p_value < 0.001
    assert d.errors["recent_labelled"]["challenger_rmse"] == chal["recent_labelled_rmse"]
    assert d.errors["recent_labelled"]["champion_rmse"] == champ["recent_labelled_rmse"]
    assert d.errors["recent_labelled"]["rows"] == 300
    assert d.errors["base_holdout"] == {"challenger_rmse": 1.0, "champion_rmse": 1.0}
    assert "interval" in d.reason and "excludes 0" in d.reason


def test_the_same_gain_on_too_few_rows_keeps_the_champion_and_says_how_many_labels() -> None:
    p, chal, champ = case(300, champ_sd=1.0, chal_sd=0.6, seed=1)
    few = Paired(y=p.y[:71], challenger=p.challenger[:71], champion=p.champion[:71])
    cf = {**chal, "recent_labelled_rmse": _rmse(few.challenger - few.y)}
    kf = {**champ, "recent_labelled_rmse": _rmse(few.champion - few.y)}
    d = decide(cf, kf, {}, margin=0.01, paired=few, min_rows=100, champion_version=1)
    assert not d.promoted
    assert d.effect_high is not None and d.effect_high < 0  # the gain itself is clear on these 71 rows
    assert d.rows == 71 and d.labels_needed == 29 and "needs 29 more labelled rows" in d.reason, d.reason
    # only PRODUCTION_HOLDOUT of new labels lands in the recent holdout: 29 / 0.3 -> 97 labelled rows
    d3 = decide(cf, kf, {}, margin=0.01, paired=few, min_rows=100, label_share=0.3)
    assert d3.labels_needed == 97 and "29 more in the recent holdout" in d3.reason


def test_a_noisy_small_gain_is_inconclusive_and_estimates_the_labels_needed() -> None:
    p, chal, champ = case(150, champ_sd=3.0, chal_sd=2.9, corr=0.9, seed=4)
    d = decide(chal, champ, {}, margin=0.01, paired=p, min_rows=100, champion_version=1)
    assert d.effect_relative is not None and d.effect_relative >= 0.01  # the margin alone would promote
    assert d.effect is not None and d.effect < 0 and d.effect_high is not None and d.effect_high >= 0
    assert not d.promoted and d.reason.startswith("inconclusive"), d.reason
    assert d.labels_needed is not None and d.labels_needed > 0
    assert f"needs about {d.labels_needed} more labelled rows" in d.reason
    # the estimate is meant: the same rows, as often as the estimate says, make the interval exclude 0
    k = math.ceil((150 + d.labels_needed) / 150)
    more = Paired(y=np.tile(p.y, k), challenger=np.tile(p.challenger, k), champion=np.tile(p.champion, k))
    dk = decide(chal, champ, {}, margin=0.01, paired=more, min_rows=100, champion_version=1)
    assert dk.promoted and dk.effect_high is not None and dk.effect_high < 0, dk.reason


def test_a_gain_too_small_to_show_gets_no_absurd_labels_estimate() -> None:
    # two equally good models: by chance the challenger is a hair better on these rows
    p, chal, champ = case(150, champ_sd=3.0, chal_sd=3.0, corr=0.5, seed=4)
    d = decide(chal, champ, {}, margin=0.0, paired=p, min_rows=100, champion_version=1)
    assert d.effect is not None and d.effect < 0 and d.effect_high is not None and d.effect_high > 0
    assert not d.promoted and d.reason.startswith("inconclusive"), d.reason
    assert d.labels_needed is None and "would need more than 20x the 150 rows" in d.reason, d.reason


def test_a_challenger_that_is_not_better_gets_no_labels_estimate() -> None:
    p, chal, champ = case(200, champ_sd=1.0, chal_sd=1.0, seed=2)
    same = Paired(y=p.y, challenger=p.champion, champion=p.champion)  # identical predictions
    c = {**chal, "recent_labelled_rmse": champ["recent_labelled_rmse"]}
    d = decide(c, champ, {}, margin=0.0, paired=same, min_rows=100)
    assert not d.promoted and d.effect == 0 and d.labels_needed is None, d.reason
    assert "not better" in d.reason


def test_the_margin_still_applies_to_a_significant_gain() -> None:
    p, chal, champ = case(5000, champ_sd=1.0, chal_sd=0.99, corr=0.99, seed=3)
    d = decide(chal, champ, {}, margin=0.05, paired=p, min_rows=100)
    assert d.effect_high is not None and d.effect_high < 0  # significant ...
    assert not d.promoted and "below the required 5.0%" in d.reason  # ... but too small
    assert d.labels_needed is None


def test_drifted_trade_off_is_recorded_on_both_populations() -> None:
    p, chal, champ = case(300, champ_sd=2.3, chal_sd=1.5, seed=5)
    chal.update(base_holdout_rmse=1.14, base_holdout_mae=0.9)
    champ.update(base_holdout_rmse=1.0, base_holdout_mae=0.8)
    d = decide(chal, champ, {}, margin=0.01, paired=p, min_rows=100, drift_ratio=0.15, base_tolerance=0.05)
    assert d.promoted and d.drifted is True, d.reason
    assert d.errors["base_holdout"] == {
        "challenger_rmse": 1.14,
        "champion_rmse": 1.0,
        "challenger_mae": 0.9,
        "champion_mae": 0.8,
    }
    assert d.errors["recent_labelled"]["challenger_rmse"] < d.errors["recent_labelled"]["champion_rmse"]
    assert "trade-off" in d.reason and "on the base holdout 1.1400 vs 1.0000 (14.0% worse)" in d.reason
    # not drifted (the champion errs as much on the base holdout): the base holdout blocks
    champ.update(base_holdout_rmse=champ["recent_labelled_rmse"])
    chal.update(base_holdout_rmse=champ["recent_labelled_rmse"] * 1.2)
    nd = decide(chal, champ, {}, margin=0.01, paired=p, min_rows=100, drift_ratio=0.15, base_tolerance=0.05)
    assert not nd.promoted and nd.drifted is False and "not drifted" in nd.reason and "trade-off" in nd.reason


def test_the_interval_is_deterministic_by_seed_and_fast() -> None:
    p, chal, champ = case(150, champ_sd=3.0, chal_sd=2.9, corr=0.9, seed=4)
    a = decide(chal, champ, {}, margin=0.01, paired=p, seed=7)
    b = decide(chal, champ, {}, margin=0.01, paired=p, seed=7)
    c = decide(chal, champ, {}, margin=0.01, paired=p, seed=8)
    assert (a.effect_low, a.effect_high) == (b.effect_low, b.effect_high)
    assert (a.effect_low, a.effect_high) != (c.effect_low, c.effect_high)
    d = np.random.default_rng(0).normal(-0.1, 1.0, 15_000)
    t0 = time.perf_counter()
    low, high = bootstrap_interval(d, resamples=2000, seed=0)
    assert time.perf_counter() - t0 < 5.0
    se = 1.0 / math.sqrt(15_000)  # the percentile interval matches the normal one on a large sample
    assert math.isclose(high - low, 2 * 1.96 * se, rel_tol=0.1)


def test_without_recent_rows_the_margin_rule_is_unchanged() -> None:
    base = {"base_holdout_rmse": 1.0}
    d = decide(base, dict(base), {}, margin=0.0, champion_version=1)
    assert d.promoted and d.method == "margin" and d.rows is None and d.labels_needed is None
    assert d.effect_relative == 0.0 and d.errors == {
        "base_holdout": {"challenger_rmse": 1.0, "champion_rmse": 1.0}
    }
    assert not decide(base, dict(base), {}, margin=0.01).promoted


def test_too_few_rows_and_a_gain_too_small_to_show_count_only_the_shortfall() -> None:
    # two equally good models on 29 rows: the interval estimate alone would ask for ~100x the rows
    p, chal, champ = case(29, champ_sd=3.0, chal_sd=3.0, corr=0.9, seed=2)
    d = decide(chal, champ, {}, margin=0.0, paired=p, min_rows=30, champion_version=1, label_share=0.25)
    assert not d.promoted and d.reason.startswith("not enough evidence"), d.reason
    assert d.effect is not None and d.effect < 0 < (d.effect_high or 0)
    assert d.labels_needed == 4 and "a gain this small would need more than 20x" in d.reason, d.reason


HOLDOUT = BaseHoldout(fingerprint="f1", test_size=0.2, seed=0, rows=240)
LIVE = {"base_holdout_rmse": 0.5, "base_holdout_mae": 0.4, "recent_labelled_rmse": 2.0}


def test_a_champion_never_refitted_on_the_base_holdout_is_evaluated_there() -> None:
    assert champion_base(LIVE, None, HOLDOUT, 3) == (LIVE, "")
    kept_out = BaseHoldout("f1", 0.2, 0, 240, trained_on=False, metrics={"rmse": 1.0})
    assert champion_base(LIVE, kept_out, HOLDOUT, 3) == (LIVE, "")


def test_a_champion_refitted_on_this_base_holdout_gets_its_error_recorded_before_the_refit() -> None:
    rec = BaseHoldout("f1", 0.2, 0, 240, trained_on=True, metrics={"rmse": 1.1, "mae": 0.9, "r2": 0.7})
    got, note = champion_base(LIVE, rec, HOLDOUT, 3)
    assert got == {
        "base_holdout_rmse": 1.1,
        "base_holdout_mae": 0.9,
        "base_holdout_r2": 0.7,
        "recent_labelled_rmse": 2.0,
    }
    assert "champion v3" in note and "before that refit" in note
    # the recorded error decides a base-holdout-only retrain: 1.0 beats 1.1 (not the in-sample 0.5)
    d = decide({"base_holdout_rmse": 1.0}, got, {}, margin=0.01, champion_version=3)
    assert d.promoted and d.champion["base_holdout_rmse"] == 1.1, d.reason


def test_a_champion_refitted_on_another_base_holdout_has_none_so_it_neither_decides_nor_guards() -> None:
    rec = BaseHoldout("f0", 0.2, 0, 240, trained_on=True, metrics={"rmse": 1.1})  # other data
    got, note = champion_base(LIVE, rec, HOLDOUT, 3)
    assert got == {"recent_labelled_rmse": 2.0} and "neither decides nor guards" in note
    d = decide({"base_holdout_rmse": 0.2}, got, {}, margin=0.01, champion_version=3)
    assert not d.promoted and "no finite base_holdout_rmse" in d.reason, d.reason
    # recent rows decide: no base holdout guard (a challenger far worse on the base holdout still passes)
    p, chal, champ = case(300, champ_sd=1.0, chal_sd=0.6, seed=1)
    d = decide(
        {**chal, "base_holdout_rmse": 9.0},
        {"recent_labelled_rmse": champ["recent_labelled_rmse"]},
        {},
        margin=0.01,
        paired=p,
        min_rows=100,
        champion_version=3,
    )
    assert d.promoted and d.drifted is None and "trade-off" not in d.reason, d.reason
    for other in (
        BaseHoldout("f1", 0.25, 0, 240),
        BaseHoldout("f1", 0.2, 1, 240),
        BaseHoldout("f1", 0.2, 0, 200),
    ):
        changed = BaseHoldout(other.fingerprint, other.test_size, other.seed, other.rows, True, {"rmse": 1.1})
        assert "base_holdout_rmse" not in champion_base(LIVE, changed, HOLDOUT, 3)[0]


def test_the_base_holdout_record_round_trips_and_garbage_reads_as_none() -> None:
    rec = BaseHoldout("f1", 0.2, 0, 240, trained_on=True, metrics={"rmse": 1.1, "mae": float("nan")})
    assert BaseHoldout.from_json(rec.to_json()) == BaseHoldout("f1", 0.2, 0, 240, True, {"rmse": 1.1})
    for raw in (
        None,
        "",
        "not json",
        "[]",
        '{"fingerprint": "f1"}',
        '{"fingerprint":"f","test_size":"x","seed":0,"rows":1,"trained_on":true}',
    ):
        assert BaseHoldout.from_json(raw) is None, raw
