"""The approval gate: does a challenger replace the champion?

Pure logic on metrics (and, for recent production data, per-row predictions) already computed on
the SAME evaluation data for both models (no MLflow, no I/O). Metric dicts are keyed
``<evaluation set>_<metric>``, e.g. ``base_holdout_rmse`` or ``recent_labelled_rmse``.

The rule (RMSE, lower is better; ``margin`` = PROMOTION_MIN_IMPROVEMENT):

1. **Deciding set.** ``recent_labelled`` (a held-out slice of the most recent labelled
   production rows) when it was evaluated, else ``base_holdout`` (the holdout of the base
   dataset). Production data is what the model serves now, so it decides when present.
2. **No champion.** The challenger must beat the naive baseline (predicting the training
   mean) on the deciding set by ``margin``: ``rmse <= naive_rmse * (1 - margin)``.
3. **Champion exists, base holdout decides** (no labelled production data: e.g. a retrain on the
   base data only). The challenger must beat the champion by ``margin``:
   ``challenger_rmse <= champion_rmse * (1 - margin)`` (method ``margin``).
4. **Champion exists, recent labelled rows decide: evidence** (method ``paired-bootstrap``, when
   the per-row predictions of both models on those rows are given as :class:`Paired`):

   a. at least ``min_rows`` (GATE_MIN_ROWS) recent rows, else the champion stays and the
      decision says how many more labelled rows are needed (``labels_needed``);
   b. the relative RMSE improvement on those rows is at least ``margin``;
   c. the per-row differences of squared error (challenger minus champion, the same rows) have
      a paired bootstrap interval (``confidence``, 2,000 seeded resamples) entirely below 0:
      the challenger is better beyond the noise of this sample. When the mean difference favours
      the challenger but the interval still reaches 0, the champion stays and ``labels_needed``
      estimates the rows at which the interval's current half-width would exclude 0
      (half-width ~ 1/sqrt(n));
   d. the base-holdout guard: the recent data counts as *drifted* when the champion's RMSE on it
      exceeds its own base-holdout RMSE by more than ``drift_ratio``. Not drifted: the challenger
      must also stay within ``base_tolerance`` of the champion on the base holdout
      (``challenger <= champion * (1 + base_tolerance)``), so that production rows cannot trade
      away accuracy on the bulk of the data. Drifted: the old distribution no longer describes the
      traffic, so the base holdout does not block, and the trade-off is stated in the reason.

   Both populations' errors of both models are recorded (``errors``) whatever the verdict.
   Without per-row predictions (a caller that has only metrics) step 4 falls back to the margin
   rule of step 3 plus the guard of 4d (method ``margin``).
5. A missing or non-finite challenger metric never promotes.

``labels_needed`` counts labelled production rows to send, not recent rows: only a share
(``label_share`` = PRODUCTION_HOLDOUT) of newly labelled rows lands in the recent holdout.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from gradeflow_shared.contracts import GateDecision

BASE = "base_holdout"
RECENT = "recent_labelled"
RESAMPLES = 2000
_CHUNK = 2_000_000  # resampled indices per chunk (memory bound of the bootstrap)


@dataclass(frozen=True)
class Paired:
    """Truth and both models' predictions on the same recent rows, in the same order."""

    y: np.ndarray
    challenger: np.ndarray
    champion: np.ndarray

    def squared_error_diff(self) -> np.ndarray:
        y = np.asarray(self.y, dtype=float)
        return (np.asarray(self.challenger, dtype=float) - y) ** 2 - (
            np.asarray(self.champion, dtype=float) - y
        ) ** 2


BASE_HOLDOUT_TAG = "gradeflow.base_holdout"  # version tag: the version's ``BaseHoldout`` as JSON
_BASE_KEYS = ("rmse", "mae", "r2")


@dataclass(frozen=True)
class BaseHoldout:
    """Which rows a version's base holdout was, whether the version was trained on them, and its error
    there measured before that (REFIT_ON_BASE_HOLDOUT).

    The base split is deterministic: the same data (fingerprint), TEST_SIZE and SEED give the same rows,
    so an error recorded for one retrain's base holdout is an error on the next retrain's base holdout.
    """

    fingerprint: str
    test_size: float
    seed: int
    rows: int
    trained_on: bool = False
    metrics: dict[str, float] = field(default_factory=dict)  # rmse / mae / r2 of the fit before the refit

    def same_rows(self, other: BaseHoldout) -> bool:
        return (self.fingerprint, self.test_size, self.seed, self.rows) == (
            other.fingerprint,
            other.test_size,
            other.seed,
            other.rows,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "fingerprint": self.fingerprint,
                "test_size": self.test_size,
                "seed": self.seed,
                "rows": self.rows,
                "trained_on": self.trained_on,
                "metrics": {k: v for k, v in self.metrics.items() if _finite(v)},
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, raw: str | None) -> BaseHoldout | None:
        """The record of a version tag; None when there is none or it is unreadable."""
        if not raw:
            return None
        try:
            d = json.loads(raw)
            return cls(
                fingerprint=str(d["fingerprint"]),
                test_size=float(d["test_size"]),
                seed=int(d["seed"]),
                rows=int(d["rows"]),
                trained_on=bool(d["trained_on"]),
                metrics={str(k): float(v) for k, v in dict(d.get("metrics") or {}).items()},
            )
        except (ValueError, TypeError, KeyError):
            return None


def champion_base(
    live: dict[str, float], record: BaseHoldout | None, current: BaseHoldout, champion_version: int | None
) -> tuple[dict[str, float], str]:
    """The champion's metrics the gate may use on the base holdout, and what the reason should say.

    A champion never trained on its base holdout (or recorded before the record existed) is evaluated
    there as it is (``live``: those rows are out of its sample). One trained on it would be judged
    in-sample, so its live base-holdout metrics are replaced by the ones recorded before its refit when
    the current base holdout is the same rows, and dropped when it is not (the holdout may hold rows it
    was trained on): the base holdout then neither decides nor guards, and the reason says so.
    """
    if record is None or not record.trained_on:
        return live, ""
    out = {k: v for k, v in live.items() if not k.startswith(f"{BASE}_")}
    who = f"champion v{champion_version}"
    if record.same_rows(current) and _finite(record.metrics.get("rmse")):
        out.update({f"{BASE}_{k}": v for k, v in record.metrics.items() if k in _BASE_KEYS})
        return out, (
            f"{who} was refitted on the base holdout, so its base-holdout error is the one measured before "
            "that refit"
        )
    return out, (
        f"{who} was refitted on a base holdout that is not this one (dataset, TEST_SIZE or SEED changed): it "
        "has no out-of-sample base-holdout error, so the base holdout neither decides nor guards"
    )


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _rel(a: float, b: float) -> float:
    """Relative improvement of a over b (positive = a is lower/better)."""
    return (b - a) / b if b > 0 else (0.0 if a == b else -math.inf)


def _change(imp: float) -> str:
    """A relative improvement in words: "3.2% better" / "14.0% worse"."""
    if not math.isfinite(imp):
        return "worse"
    return f"{imp:.1%} better" if imp > 0 else (f"{-imp:.1%} worse" if imp < 0 else "equal")


def bootstrap_interval(
    d: np.ndarray, *, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean of ``d`` over seeded bootstrap resamples (vectorised, chunked)."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, _CHUNK // n))
    means = np.empty(resamples)
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        means[start : start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_t_pvalue(d: np.ndarray) -> float | None:
    """One-sided paired t-test p-value of "the mean of ``d`` is below 0" (challenger better)."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2 or not np.any(d != d[0]):
        return None
    from scipy import stats  # noqa: PLC0415  (scipy comes with scikit-learn; imported on use)

    p = float(stats.ttest_1samp(d, 0.0, alternative="less").pvalue)
    return p if math.isfinite(p) else None


PRACTICAL_EVIDENCE = 20  # an estimate beyond 20x the rows seen is not reported as "labels needed"


def labels_for_interval(n: int, mean: float, high: float) -> int | None:
    """More paired rows at which the interval's upper half-width (shrinking as 1/sqrt(n)) would fall
    below the observed mean gain; None when the mean does not favour the challenger."""
    if not (mean < 0 and _finite(high)) or n <= 0:
        return None
    half = high - mean
    if high < 0:
        return 0
    needed = n * (half / -mean) ** 2
    return max(1, math.ceil(needed - n) + 1)


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
    paired: Paired | None = None,
    min_rows: int = 100,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
    label_share: float = 1.0,
) -> GateDecision:
    """Apply the gate rule (module docstring) and explain the verdict in ``reason``."""
    evaluated_on = [BASE] + ([RECENT] if _finite(challenger.get(f"{RECENT}_{metric}")) else [])
    deciding = evaluated_on[-1]
    key = f"{deciding}_{metric}"
    chal = challenger.get(key)
    evidence: dict[str, object] = {"method": "margin"}

    def errors(champ_metrics: dict[str, float] | None) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for pop in evaluated_on:
            row: dict[str, float] = {}
            for mname in (metric, "mae"):
                for who, src in (("challenger", challenger), ("champion", champ_metrics or {})):
                    v = src.get(f"{pop}_{mname}")
                    if _finite(v):
                        row[f"{who}_{mname}"] = float(v)  # type: ignore[arg-type]
            if row:
                out[pop] = row
        if paired is not None and RECENT in out:
            out[RECENT]["rows"] = float(len(paired.y))
        return out

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
            errors=errors(champion),
            **evidence,  # type: ignore[arg-type]
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
        evidence["effect_relative"] = imp
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
    evidence["effect_relative"] = imp
    head = f"{key} {chal:.4f} vs champion v{champion_version} {ref:.4f} ({_change(imp)})"
    champ_base = champion.get(f"{BASE}_{metric}")
    chal_base = challenger.get(f"{BASE}_{metric}")
    guard = deciding == RECENT and _finite(champ_base) and _finite(chal_base)
    drifted = False
    trade = ""
    if guard:
        assert champ_base is not None and chal_base is not None
        drifted = champ_base > 0 and ref > champ_base * (1 + drift_ratio)
        evidence["drifted"] = drifted
        trade = (
            f"trade-off: challenger vs champion {metric} on recent rows {chal:.4f} vs {ref:.4f} "
            f"({_change(imp)}), on the base holdout {chal_base:.4f} vs {champ_base:.4f} "
            f"({_change(_rel(chal_base, champ_base))})"
        )

    tail = f"; {trade}" if trade else ""
    if deciding == RECENT and paired is not None:
        d = paired.squared_error_diff()
        n = len(d)
        finite = bool(n) and bool(np.all(np.isfinite(d)))
        mean = float(d.mean()) if finite else math.nan
        low, high = (
            bootstrap_interval(d, confidence=confidence, resamples=resamples, seed=seed)
            if finite
            else (
                math.nan,
                math.nan,
            )
        )
        share = label_share if label_share > 0 else 1.0
        evidence.update(
            method="paired-bootstrap",
            rows=n,
            min_rows=min_rows,
            effect=mean,
            effect_low=low,
            effect_high=high,
            confidence=confidence,
            resamples=resamples,
            p_value=paired_t_pvalue(d) if finite else None,
        )
        stat = (
            f"mean squared-error difference {mean:+.4f} (challenger - champion), "
            f"{confidence:.0%} paired bootstrap interval [{low:+.4f}, {high:+.4f}] on {n} recent rows"
        )
        head = f"{head}; {stat}"
        if not finite:
            return verdict(False, f"{head}: non-finite per-row errors never promote{tail}", champion)
        if n < min_rows:
            short = min_rows - n
            more = labels_for_interval(n, mean, high) or 0
            # a gain this small is not worth waiting for: only the shortfall to GATE_MIN_ROWS is counted
            small = more > PRACTICAL_EVIDENCE * n
            recent = short if small else max(short, more)
            labels = math.ceil(recent / share)
            evidence["labels_needed"] = labels
            why = (
                f" (at least: a gain this small would need more than {PRACTICAL_EVIDENCE}x the {n} rows seen "
                "to show)"
                if small
                else ""
            )
            return verdict(
                False,
                f"not enough evidence: {n} recent labelled rows < GATE_MIN_ROWS={min_rows}: needs "
                f"{labels} more labelled rows ({recent} more in the recent holdout){why}; {head}{tail}",
                champion,
            )
        if imp < margin:
            return verdict(
                False, f"{head}: improvement {imp:.1%} is below the required {margin:.1%}{tail}", champion
            )
        if not high < 0:
            extra = labels_for_interval(n, mean, high)
            if extra is None:
                return verdict(False, f"{head}: the challenger is not better on these rows{tail}", champion)
            if extra > PRACTICAL_EVIDENCE * n:  # a gain this small is not worth waiting for
                return verdict(
                    False,
                    f"inconclusive: {head} includes 0, and a gain this small would need more than "
                    f"{PRACTICAL_EVIDENCE}x the {n} rows seen to show{tail}",
                    champion,
                )
            labels = math.ceil(extra / share)
            evidence["labels_needed"] = labels
            return verdict(
                False,
                f"inconclusive: {head} includes 0: needs about {labels} more labelled rows "
                f"({extra} more in the recent holdout) to show a gain of this size{tail}",
                champion,
            )
        reason = f"{head}: improvement {imp:.1%} >= {margin:.1%} and the interval excludes 0"
    else:
        if imp < margin:
            return verdict(
                False, f"{head}: improvement {imp:.1%} is below the required {margin:.1%}", champion
            )
        reason = f"{head}: improvement {imp:.1%} >= {margin:.1%}"

    if guard:
        assert champ_base is not None and chal_base is not None
        if drifted:
            reason += (
                f"; recent labelled data is drifted (champion {metric} {ref:.4f} there vs "
                f"{champ_base:.4f} on the base holdout), so the base holdout does not block; {trade}"
            )
        elif chal_base > champ_base * (1 + base_tolerance):
            return verdict(
                False,
                reason + f"; but recent data is not drifted and the challenger is worse on the base "
                f"holdout ({chal_base:.4f} vs {champ_base:.4f}, tolerance {base_tolerance:.1%}); {trade}",
                champion,
            )
        else:
            reason += f"; base holdout {chal_base:.4f} vs {champ_base:.4f} within tolerance; {trade}"
    return verdict(True, reason, champion)
