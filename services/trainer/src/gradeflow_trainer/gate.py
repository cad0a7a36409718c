"""The approval gate: does a challenger replace the champion?

Pure logic on metrics already computed on the SAME evaluation data for both models (no
MLflow, no I/O). Metric dicts are keyed ``<evaluation set>_<metric>``, e.g.
``base_holdout_rmse`` or ``recent_labelled_rmse``.

The rule (RMSE, lower is better; ``margin`` = PROMOTION_MIN_IMPROVEMENT):

1. **Deciding set.** ``recent_labelled`` (a held-out slice of the most recent labelled
   production rows) when it was evaluated, else ``base_holdout`` (the holdout of the base
   dataset). Production data is what the model serves now, so it decides when present.
2. **No champion.** The challenger must beat the naive baseline (predicting the training
   mean) on the deciding set by ``margin``: ``rmse <= naive_rmse * (1 - margin)``.
3. **Champion exists.** The challenger must beat the champion on the deciding set by
   ``margin``: ``challenger_rmse <= champion_rmse * (1 - margin)``.
4. **Base-holdout guard** (only when ``recent_labelled`` decides). The recent data counts as
   *drifted* when the champion's RMSE on it exceeds its own base-holdout RMSE by more than
   ``drift_ratio``. Not drifted: the challenger must also stay within ``base_tolerance``
   of the champion on the base holdout (``challenger <= champion * (1 + base_tolerance)``),
   so that a noisy small production sample cannot trade away accuracy on the bulk of the
   data. Drifted: the old distribution no longer describes the traffic, so a model much
   better on the current distribution is promoted even if it is worse on the base holdout;
   the base-holdout numbers are still recorded in the decision.
5. A missing or non-finite challenger metric never promotes.
"""

from __future__ import annotations

import math

from gradeflow_shared.contracts import GateDecision

BASE = "base_holdout"
RECENT = "recent_labelled"


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _rel(a: float, b: float) -> float:
    """Relative improvement of a over b (positive = a is lower/better)."""
    return (b - a) / b if b > 0 else (0.0 if a == b else -math.inf)


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
) -> GateDecision:
    """Apply the gate rule (module docstring) and explain the verdict in ``reason``."""
    evaluated_on = [BASE] + ([RECENT] if _finite(challenger.get(f"{RECENT}_{metric}")) else [])
    deciding = evaluated_on[-1]
    key = f"{deciding}_{metric}"
    chal = challenger.get(key)

    def verdict(promoted: bool, reason: str, champ_metrics: dict[str, float]) -> GateDecision:
        return GateDecision(
            promoted=promoted,
            reason=reason,
            challenger_version=challenger_version,
            champion_version=champion_version,
            metric=metric,
            margin=margin,
            challenger={k: float(v) for k, v in challenger.items() if _finite(v)},
            champion={k: float(v) for k, v in champ_metrics.items() if _finite(v)},
            evaluated_on=evaluated_on,
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

    ref = champion.get(key)
    if not _finite(ref):
        return verdict(False, f"champion v{champion_version} has no finite {key}", champion)
    assert ref is not None
    imp = _rel(chal, ref)
    if imp < margin:
        return verdict(
            False,
            f"{key} {chal:.4f} vs champion v{champion_version} {ref:.4f}: improvement {imp:.1%} "
            f"is below the required {margin:.1%}",
            champion,
        )
    reason = (
        f"{key} {chal:.4f} vs champion v{champion_version} {ref:.4f}: improvement {imp:.1%} >= {margin:.1%}"
    )

    if deciding == RECENT:
        champ_base = champion.get(f"{BASE}_{metric}")
        chal_base = challenger.get(f"{BASE}_{metric}")
        if _finite(champ_base) and _finite(chal_base):
            assert champ_base is not None and chal_base is not None
            drifted = champ_base > 0 and ref > champ_base * (1 + drift_ratio)
            if drifted:
                reason += (
                    f"; recent labelled data is drifted (champion {metric} {ref:.4f} there vs "
                    f"{champ_base:.4f} on the base holdout), so the base holdout "
                    f"({chal_base:.4f} vs {champ_base:.4f}) does not block"
                )
            elif chal_base > champ_base * (1 + base_tolerance):
                return verdict(
                    False,
                    reason + f"; but recent data is not drifted and the challenger is worse on the base "
                    f"holdout ({chal_base:.4f} vs {champ_base:.4f}, tolerance {base_tolerance:.1%})",
                    champion,
                )
            else:
                reason += f"; base holdout {chal_base:.4f} vs {champ_base:.4f} within tolerance"
    return verdict(True, reason, champion)
