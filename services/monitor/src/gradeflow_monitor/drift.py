"""Feature drift of a window against the model's reference sample, with chosen methods and thresholds.

Why not Evidently's defaults (measured in ``results/drift_quality.md``): they pick the test by the
reference size (<= 1000 rows: K-S / chi-square p < 0.05; > 1000: Wasserstein / Jensen-Shannon >= 0.1)
and call dataset drift at half of the columns. The chi-square test treats the reference proportions as
exact, so on large windows it flags every low-cardinality column; the fixed 0.1 distance is below the
sampling noise of a 100-row window; and half of the columns misses a shift of two columns.

The policy here, per column:

* numeric -> normed Wasserstein distance (Evidently ``wasserstein``: W1 / std of the reference), an
  effect size in reference standard deviations;
* categorical -> Jensen-Shannon distance (Evidently ``jensenshannon``);
* threshold = max(effect floor, noise quantile). The floor (0.1) is the smallest shift worth acting on,
  whatever the sample size (so 100,000-row windows are not flagged for harmless differences). The noise
  quantile is the (1 - alpha) quantile of the distance between two i.i.d. samples of sizes n (window)
  and m (reference): for Jensen-Shannon ``sqrt(chi2_{k-1}(1-alpha) * (1/n + 1/m) / 8)`` (JS divergence
  is chi2/8 to second order); for the normed Wasserstein distance ``sqrt(1/n + 1/m) * Q`` where Q is the
  (1 - alpha) quantile of ``int |B(F(x))| dx / std`` for a Brownian bridge B on the reference's own
  distribution F, simulated once per reference column. Both include the reference's own sampling noise.
* no verdict below ``min_window_rows``; dataset drift when the share of drifted columns >= drift_share.

``evaluate_drift`` runs the Evidently Report (per-column method + threshold passed explicitly) and keeps
the snapshot for the HTML/JSON report. (The detection-quality benchmark, ``gradeflow_testkit.drift_quality``,
computes the same statistics through the same Evidently stattest functions without building reports.)
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

logger = logging.getLogger(__name__)

NUM_METHOD = "wasserstein"
CAT_METHOD = "jensenshannon"


@dataclass(frozen=True)
class DriftPolicy:
    """Methods, thresholds and minimum sizes of a drift check (see the module docstring)."""

    num_method: str = NUM_METHOD
    cat_method: str = CAT_METHOD
    num_floor: float = 0.1
    cat_floor: float = 0.1
    alpha: float = 0.01
    min_window_rows: int = 100
    drift_share: float = 0.1
    simulations: int = 20_000
    grid: int = 256


@dataclass
class ColumnDrift:
    column: str
    kind: str  # numeric | categorical
    method: str
    score: float
    threshold: float
    drifted: bool
    noise_threshold: float | None = None
    floor: float | None = None


@dataclass
class DriftResult:
    rows: int
    reference_rows: int
    verdict: bool  # False: window too small, no verdict given
    reason: str
    columns: list[ColumnDrift] = field(default_factory=list)
    drift_share: float | None = None
    dataset_drift: bool = False
    drift_share_threshold: float | None = None
    snapshot: Any = None  # evidently Snapshot (for HTML/JSON), when run through a Report

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "snapshot"}
        d["drifted_columns"] = self.drifted_columns
        return d


# ------------------------------------------------------------------ data preparation
def prepare(df: pd.DataFrame, num_cols: list[str], cat_cols: list[str]) -> pd.DataFrame:
    """Only the feature columns, numeric as float, categorical as str (missing stays NaN)."""
    out = pd.DataFrame(index=range(len(df)))
    for c in num_cols:
        out[c] = pd.to_numeric(df[c], errors="coerce").astype(float).to_numpy() if c in df else np.nan
    for c in cat_cols:
        if c in df:
            s = df[c].reset_index(drop=True)
            out[c] = s.where(s.isna(), s.astype(str)).astype(object)
        else:
            out[c] = pd.Series([np.nan] * len(df), dtype=object)
    return out


UNSEEN = "(unseen)"
MAX_VALUE_CHARS = 64


def bound_categories(
    frame: pd.DataFrame, cat_cols: list[str], known: Mapping[str, Collection[str]]
) -> pd.DataFrame:
    """Every categorical value not in ``known[column]`` becomes ``UNSEEN``; values are cut to MAX_VALUE_CHARS.

    The report embeds category values in the HTML page: a value from a request (``</script>...``) must
    never reach it. The unseen values stay drift evidence as one category (the distance sees their mass:
    a value absent from the reference adds the same to the Jensen-Shannon distance, merged or not).
    """
    out = frame.copy()
    for c in cat_cols:
        s = out[c]
        allowed = set(known.get(c, ()))
        out[c] = s.where(s.isna() | s.isin(allowed), UNSEEN).map(
            lambda v: v[:MAX_VALUE_CHARS] if isinstance(v, str) else v
        )
    return out


def prepare_pair(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    num_cols: list[str],
    cat_cols: list[str],
    categories: Mapping[str, Collection[str]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``prepare`` both frames; categorical values outside ``categories`` (the manifest's values seen in
    training; default: the reference's values) become ``UNSEEN`` on both sides."""
    cur = prepare(current, num_cols, cat_cols)
    ref = prepare(reference, num_cols, cat_cols)
    known = {
        c: (categories[c] if categories and categories.get(c) else set(ref[c].dropna())) for c in cat_cols
    }
    return bound_categories(cur, cat_cols, known), bound_categories(ref, cat_cols, known)


# ------------------------------------------------------------------ noise quantiles
_Q_CACHE: dict[tuple[str, float, int, int], float] = {}
_Q_LOCK = threading.Lock()


def bridge_quantile(reference: np.ndarray, alpha: float, simulations: int = 20_000, grid: int = 256) -> float:
    """(1-alpha) quantile of ``int |B(F(x))| dx / std(reference)`` (B a Brownian bridge, F the reference).

    ``sqrt(n m / (n + m)) * W1(F_n, G_m)`` converges to ``int |B(F(x))| dx`` when both samples come
    from F, so the normed Wasserstein distance of i.i.d. samples stays below ``Q * sqrt(1/n + 1/m)``
    with probability 1 - alpha. Deterministic (seeded) and cached per reference column.
    """
    x = np.asarray(reference, dtype=float)
    x = x[np.isfinite(x)]
    key = (hashlib.sha1(np.sort(x).tobytes()).hexdigest(), float(alpha), simulations, grid)
    with _Q_LOCK:
        if key in _Q_CACHE:
            return _Q_CACHE[key]
    sd = max(float(np.std(x)), 0.001)
    probs = np.linspace(0.0, 1.0, grid + 1)
    dq = np.diff(np.quantile(x, probs))  # width of the quantile function on each cell
    mids = (probs[:-1] + probs[1:]) / 2
    rng = np.random.default_rng(12345)
    total = np.empty(simulations)
    chunk = 5000
    for start in range(0, simulations, chunk):
        k = min(chunk, simulations - start)
        # Brownian motion at the cell mid-points, then the bridge W(u) - u W(1)
        steps = np.diff(np.concatenate([[0.0], mids, [1.0]]))
        w = np.cumsum(rng.standard_normal((k, grid + 1)) * np.sqrt(steps), axis=1)
        bridge = w[:, :grid] - mids * w[:, grid : grid + 1]
        total[start : start + k] = np.abs(bridge) @ dq
    q = float(np.quantile(total, 1.0 - alpha)) / sd
    with _Q_LOCK:
        _Q_CACHE[key] = q
    return q


def js_noise(k: int, n: int, m: int, alpha: float) -> float:
    """(1-alpha) quantile of the Jensen-Shannon distance (natural log) of two i.i.d. samples over k values."""
    dof = max(k - 1, 1)
    return float(np.sqrt(stats.chi2.ppf(1.0 - alpha, dof) * (1.0 / n + 1.0 / m) / 8.0))


@dataclass
class ColumnPlan:
    column: str
    kind: str
    method: str
    threshold: float
    noise: float
    floor: float


def plan_columns(
    reference: pd.DataFrame,
    n_current: dict[str, int] | int,
    num_cols: list[str],
    cat_cols: list[str],
    policy: DriftPolicy,
) -> dict[str, ColumnPlan]:
    """Method and threshold of every column for a window of ``n_current`` rows (per column: non-missing)."""
    plans: dict[str, ColumnPlan] = {}
    for c in num_cols + cat_cols:
        ref = reference[c].dropna()
        m = max(len(ref), 1)
        n = max(n_current[c] if isinstance(n_current, dict) else n_current, 1)
        if c in num_cols:
            noise = bridge_quantile(ref.to_numpy(dtype=float), policy.alpha, policy.simulations, policy.grid)
            noise *= float(np.sqrt(1.0 / n + 1.0 / m))
            plans[c] = ColumnPlan(
                c, "numeric", policy.num_method, max(policy.num_floor, noise), noise, policy.num_floor
            )
        else:
            noise = js_noise(int(ref.nunique()), n, m, policy.alpha)
            plans[c] = ColumnPlan(
                c, "categorical", policy.cat_method, max(policy.cat_floor, noise), noise, policy.cat_floor
            )
    return plans


def dataset_verdict(
    rows: int, reference_rows: int, columns: list[ColumnDrift], share_threshold: float, snapshot: Any = None
) -> DriftResult:
    """The verdict from the per-column results: dataset drift when the drifted share >= the threshold."""
    share = sum(c.drifted for c in columns) / len(columns) if columns else 0.0
    return DriftResult(
        rows=rows,
        reference_rows=reference_rows,
        verdict=True,
        reason="",
        columns=columns,
        drift_share=share,
        dataset_drift=share >= share_threshold,
        drift_share_threshold=share_threshold,
        snapshot=snapshot,
    )


def too_small(n: int, m: int, policy: DriftPolicy | None) -> str | None:
    if m == 0:
        return "empty reference sample"
    if policy is not None and n < policy.min_window_rows:
        return f"window has {n} rows < minimum {policy.min_window_rows}: no verdict"
    if n == 0:
        return "empty window"
    return None


# ------------------------------------------------------------------ the Evidently report
def evaluate_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    num_cols: list[str],
    cat_cols: list[str],
    policy: DriftPolicy | None,
    default_drift_share: float = 0.5,
    categories: Mapping[str, Collection[str]] | None = None,
) -> DriftResult:
    """Run Evidently's DataDriftPreset with the policy's per-column methods and thresholds.

    ``policy=None`` runs the preset with Evidently's defaults (for comparison). ``categories``: the values
    seen in training per categorical column (others become ``UNSEEN`` before the report is built).
    Evidently is imported here, not at module import (it takes seconds).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    cur, ref = prepare_pair(current, reference, num_cols, cat_cols, categories)
    share_threshold = policy.drift_share if policy else default_drift_share
    reason = too_small(len(cur), len(ref), policy)
    if reason:
        return DriftResult(len(cur), len(ref), False, reason, drift_share_threshold=share_threshold)
    # a column that is empty on either side cannot be compared (Evidently would raise)
    usable = [c for c in num_cols + cat_cols if cur[c].notna().any() and ref[c].notna().any()]
    nums = [c for c in num_cols if c in usable]
    cats = [c for c in cat_cols if c in usable]
    definition = DataDefinition(numerical_columns=nums, categorical_columns=cats)
    if policy is not None:
        n_nonmissing = {c: int(cur[c].notna().sum()) for c in usable}
        plans = plan_columns(ref, n_nonmissing, nums, cats, policy)
        preset = DataDriftPreset(
            columns=usable,
            drift_share=share_threshold,
            per_column_method={c: p.method for c, p in plans.items()},
            per_column_threshold={c: p.threshold for c, p in plans.items()},
        )
    else:
        plans = {}
        preset = DataDriftPreset(columns=usable, drift_share=share_threshold)
    report = Report([preset], include_tests=True)
    snapshot = report.run(
        Dataset.from_pandas(cur[usable], data_definition=definition),
        Dataset.from_pandas(ref[usable], data_definition=definition),
    )
    columns = parse_snapshot(snapshot.dict(), nums)
    for col in columns:
        plan = plans.get(col.column)
        if plan:
            col.noise_threshold, col.floor = plan.noise, plan.floor
    return dataset_verdict(len(cur), len(ref), columns, share_threshold, snapshot)


def parse_snapshot(data: dict[str, Any], num_cols: list[str]) -> list[ColumnDrift]:
    """Per-column method, score, threshold and verdict from ``snapshot.dict()`` (ValueDrift + its test)."""
    by_metric: dict[str, ColumnDrift] = {}
    for m in data.get("metrics", []):
        cfg = m.get("config", {})
        if not str(cfg.get("type", "")).endswith("ValueDrift"):
            continue
        col = cfg["column"]
        by_metric[m["id"]] = ColumnDrift(
            column=col,
            kind="numeric" if col in num_cols else "categorical",
            method=str(cfg.get("method")),
            score=float(m["value"]),
            threshold=float(cfg.get("threshold")) if cfg.get("threshold") is not None else float("nan"),
            drifted=False,
        )
    for t in data.get("tests", []):
        mid = t.get("metric_config", {}).get("metric_id")
        if mid in by_metric:
            by_metric[mid].drifted = t.get("status") == "FAIL"
    return list(by_metric.values())
