"""The approval gate: does a challenger replace the champion?

Pure logic on what was already computed on the SAME evaluation data for both models (no MLflow,
no I/O): metric dicts keyed ``<evaluation set>_<metric>`` (e.g. ``base_holdout_mae``,
``recent_labelled_rmse``) and, per evaluation set, the per-row absolute errors of both models.

The rule (``margin`` = PROMOTION_MIN_IMPROVEMENT, ``min_rows`` = GATE_MIN_ROWS):

1. **Deciding set.** ``recent_labelled`` (a held-out slice of the most recent labelled
   production rows) when it was evaluated, else ``base_holdout`` (the holdout of the base
   dataset). Production data is what the model serves now, so it decides when present.
2. **No champion.** The challenger must beat the naive baseline (predicting the training
   mean) on the deciding set by ``margin``: ``rmse <= naive_rmse * (1 - margin)``.
3. **Champion exists: decide on evidence.** Both models are scored on the same rows of the
   deciding set; the effect is the mean of the per-row differences ``|champion error| -
   |challenger error|`` (positive = the challenger is better, in target units), with a 95%
   paired-bootstrap interval (``RESAMPLES`` resamples of the rows, percentile interval). The
   champion is kept, and the decision says roughly how many more labels would settle it, when

   * ``recent_labelled`` decides and has fewer than ``min_rows`` rows;
   * the effect is below ``margin`` of the champion's MAE (relative MAE gain);
   * the interval reaches zero or below (the gain is not distinguishable from noise).

   The estimate of the labels needed is ``(1.96 * sd / effect)^2`` rows in total (sd of the
   per-row differences, effect as observed) minus the rows there are, at least what
   ``min_rows`` asks for; none when the challenger is not better at all.
4. **Base-holdout guard** (only when ``recent_labelled`` decides). The recent data counts as
   *drifted* when the champion's MAE on it exceeds its own base-holdout MAE by more than
   ``drift_ratio``. Not drifted: the challenger must also stay within ``base_tolerance``
   of the champion on the base holdout (``challenger <= champion * (1 + base_tolerance)``).
   Drifted: the old distribution no longer describes the traffic, so a challenger proven
   better on the current distribution is promoted even if it is worse on the base holdout;
   that trade-off is spelled out in the reason and both populations' errors are recorded.
5. A missing or non-finite challenger metric never promotes.
"""

from __future__ import annotations

import math

import numpy as np

from gradeflow_shared.contracts import GateDecision

BASE = "base_holdout"
RECENT = "recent_labelled"
RESAMPLES = 1000
Z95 = 1.96
TEST = f"paired bootstrap of per-row |error| differences, {RESAMPLES} resamples, 95% percentile interval"

Errors = dict[str, tuple[np.ndarray, np.ndarray]]  # set -> (challenger |error|, champion |error|) per row


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _rel(a: float, b: float) -> float:
    """Relative improvement of a over b (positive = a is lower/better)."""
    return (b - a) / b if b > 0 else (0.0 if a == b else -math.inf)


def paired_interval(
    diff: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, chunk: int = 100
) -> tuple[float, float, float]:
    """Mean of ``diff`` and its 95% bootstrap percentile interval (rows resampled with replacement)."""
    d = np.asarray(diff, dtype=float)
    if len(d) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [
            d[rng.integers(0, len(d), size=(min(chunk, resamples - i), len(d)))].mean(axis=1)
            for i in range(0, resamples, chunk)
        ]
    )
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def labels_needed(diff: np.ndarray, min_rows: int = 0) -> int | None:
    """Rough number of MORE rows for the interval of the observed mean gain to exclude zero.

    None when the observed gain is not positive (more labels would not make it a gain).
    """
    d = np.asarray(diff, dtype=float)
    n = len(d)
    effect = float(d.mean()) if n else 0.0
    short = max(0, min_rows - n)
    if effect <= 0:
        return None
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    total = math.ceil((Z95 * sd / effect) ** 2) if sd > 0 else n
    return max(short, total - n, 1)


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    naive: dict[str, float],
    *,
    margin: float,
    base_tolerance: float = 0.05,
    drift_ratio: float = 0.15,
    challenger_version: int | None = None,
    champion_version: int | None = None,
    metric: str = "rmse",
    errors: Errors | None = None,
    min_rows: int = 100,
    seed: int = 0,
) -> GateDecision:
    """Apply the gate rule (module docstring) and explain the verdict in ``reason``."""
    evaluated_on = [BASE] + ([RECENT] if _finite(challenger.get(f"{RECENT}_{metric}")) else [])
    deciding = evaluated_on[-1]
    key = f"{deciding}_{metric}"
    chal = challenger.get(key)
    evidence: dict[str, object] = {"deciding_set": deciding}

    def verdict(promoted: bool, reason: str, champ_metrics: dict[str, float], **kw: object) -> GateDecision:
        return GateDecision.model_validate(
            {
                "promoted": promoted,
                "reason": reason,
                "challenger_version": challenger_version,
                "champion_version": champion_version,
                "metric": kw.pop("metric", metric),
                "margin": margin,
                "challenger": {k: float(v) for k, v in challenger.items() if _finite(v)},
                "champion": {k: float(v) for k, v in champ_metrics.items() if _finite(v)},
                "evaluated_on": evaluated_on,
                **evidence,
                **kw,
            }
        )

    if not _finite(chal):
        return verdict(False, f"challenger has no finite {key}", champion or {})
    assert chal is not None

    if champion is None:
        ref = naive.get(key)
        naive_metrics = {f"naive_{k}": v for k, v in naive.items()}
        if not _finite(ref):
            return verdict(False, f"no champion and no naive baseline {key} to compare with", naive_metrics)
        assert ref is not None
        imp = _rel(chal, ref)
        if imp >= margin:
            return verdict(
                True,
                f"first model: {key} {chal:.4f} beats the naive baseline {ref:.4f} by {imp:.1%} "
                f"(needs {margin:.1%})",
                naive_metrics,
            )
        return verdict(
            False,
            f"first model: {key} {chal:.4f} does not beat the naive baseline {ref:.4f} by {margin:.1%} "
            f"(improvement {imp:.1%})",
            naive_metrics,
        )
    ref_err = errors.get(deciding) if errors else None
    if ref_err is None or len(ref_err[0]) != len(ref_err[1]) or len(ref_err[0]) == 0:
        return verdict(False, f"no per-row errors of both models on {deciding} to compare", champion)
    e_chal, e_champ = (np.asarray(a, dtype=float) for a in ref_err)
    diff = e_champ - e_chal
    n = len(diff)
    effect, low, high = paired_interval(diff, seed=seed)
    champ_mae = float(e_champ.mean())
    gain = _rel(float(e_chal.mean()), champ_mae)
    evidence.update(
        rows=n,
        min_rows=min_rows if deciding == RECENT else 0,
        effect=effect,
        effect_low=low,
        effect_high=high,
        test=TEST,
    )
    head = (
        f"{deciding} MAE {e_chal.mean():.4f} vs champion v{champion_version} {champ_mae:.4f} on the same "
        f"{n} rows: gain {effect:+.4f} (95% interval {low:+.4f} .. {high:+.4f}, {gain:+.1%})"
    )
    trade = _trade_off(challenger, champion)
    need = labels_needed(diff, min_rows if deciding == RECENT else 0)
    more = f"; needs ≈{need} more labels" if need is not None else "; the challenger is not better"
    if deciding == RECENT and n < min_rows:
        return verdict(
            False,
            f"not enough evidence: only {n} recent labelled rows (GATE_MIN_ROWS={min_rows}){more}; {head}{trade}",
            champion,
            metric="mae",
            more_labels_needed=need,
        )
    if gain < margin:
        return verdict(
            False,
            f"{head}: improvement {gain:.1%} is below the required {margin:.1%}{trade}",
            champion,
            metric="mae",
        )
    if not low > 0:
        return verdict(
            False,
            f"not enough evidence: {head}, the interval reaches zero{more}{trade}",
            champion,
            metric="mae",
            more_labels_needed=need,
        )
    reason = f"{head}: better beyond noise, improvement {gain:.1%} >= {margin:.1%}"
    if deciding == RECENT:
        champ_base, chal_base = champion.get(f"{BASE}_mae"), challenger.get(f"{BASE}_mae")
        champ_recent = champion.get(f"{RECENT}_mae")
        if _finite(champ_base) and _finite(chal_base) and _finite(champ_recent):
            assert champ_base is not None and chal_base is not None and champ_recent is not None
            drifted = champ_base > 0 and champ_recent > champ_base * (1 + drift_ratio)
            if drifted:
                reason += (
                    f"; recent labelled data is drifted (champion MAE {champ_recent:.4f} there vs "
                    f"{champ_base:.4f} on the base holdout), so the base holdout does not block"
                )
            elif chal_base > champ_base * (1 + base_tolerance):
                return verdict(
                    False,
                    reason + f"; but recent data is not drifted and the challenger is worse on the base "
                    f"holdout (MAE {chal_base:.4f} vs {champ_base:.4f}, tolerance {base_tolerance:.1%})",
                    champion,
                    metric="mae",
                )
    return verdict(True, reason + trade, champion, metric="mae")


def _trade_off(challenger: dict[str, float], champion: dict[str, float]) -> str:
    """Both populations' MAE, champion -> challenger (the trade-off a promotion makes)."""
    parts = []
    for name in (BASE, RECENT):
        a, b = champion.get(f"{name}_mae"), challenger.get(f"{name}_mae")
        if _finite(a) and _finite(b):
            assert a is not None and b is not None
            parts.append(f"{name} MAE {a:.4f} -> {b:.4f} ({_rel(b, a):+.1%})")
    return ("; champion -> challenger: " + ", ".join(parts)) if parts else ""


def decision_tags(decision: GateDecision) -> dict[str, str]:
    """The evidence of a decision as flat MLflow tags (``gate.*``), both populations' errors included."""
    tags: dict[str, str] = {}
    if decision.deciding_set:
        tags["gate.deciding_set"] = decision.deciding_set
    if decision.effect is not None:
        tags["gate.rows"] = str(decision.rows)
        tags["gate.effect"] = f"{decision.effect:.6g}"
        tags["gate.effect_interval"] = f"[{decision.effect_low:.6g}, {decision.effect_high:.6g}]"
        tags["gate.test"] = decision.test
    if decision.more_labels_needed is not None:
        tags["gate.more_labels_needed"] = str(decision.more_labels_needed)
    for name in (BASE, RECENT):
        a, b = decision.champion.get(f"{name}_mae"), decision.challenger.get(f"{name}_mae")
        if a is not None and b is not None:
            tags[f"gate.mae.{name}"] = f"champion {a:.4f}, challenger {b:.4f}"
    return tags
