"""Detection quality of the drift policy vs Evidently's defaults, on synthetic windows.

``python -m gradeflow_testkit.drift_quality --out results/drift_quality.md`` measures, for a 500-row and a
5,000-row reference (``synth.generate(m, seed=1)``):

* false alarms: windows drawn i.i.d. from the reference distribution (other seeds) at 100, 1,000,
  10,000 and 100,000 rows: dataset-level alarms out of N windows and the mean share of flagged columns;
* detection: windows of the ``covariate_attendance`` and ``new_category`` scenarios (severity 1).

Both the policy (``DriftPolicy()``) and Evidently's defaults (method picked by Evidently, its default
thresholds, dataset drift at 0.5) run on the same windows through Evidently's own stattest functions
(``fast_drift``); ``equivalence`` checks on a few windows that the full Evidently Report gives the same
scores and verdicts.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import gradeflow_shared.synth as synth
from gradeflow_monitor.drift import (
    ColumnDrift,
    DriftPolicy,
    DriftResult,
    dataset_verdict,
    evaluate_drift,
    plan_columns,
    prepare_pair,
    too_small,
)

NUM = [c.name for c in synth.COLUMNS if c.kind == "numeric"]
CAT = [c.name for c in synth.COLUMNS if c.kind == "categorical"]
REF_SEED = 1
WINDOW_SEED0 = 10_000


def fast_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    num_cols: list[str],
    cat_cols: list[str],
    policy: DriftPolicy | None,
    default_drift_share: float = 0.5,
) -> DriftResult:
    """The same per-column statistics as ``evaluate_drift`` via Evidently's stattest functions, no Report.

    ``policy=None`` reproduces Evidently's defaults (method chosen by ``get_stattest(..., None)``,
    its default thresholds, dataset drift at ``default_drift_share``).
    """
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    cur, ref = prepare_pair(current, reference, num_cols, cat_cols)
    reason = too_small(len(cur), len(ref), policy)
    share_threshold = policy.drift_share if policy else default_drift_share
    if reason:
        return DriftResult(len(cur), len(ref), False, reason, drift_share_threshold=share_threshold)
    n_nonmissing = {c: int(cur[c].notna().sum()) for c in num_cols + cat_cols}
    plans = plan_columns(ref, n_nonmissing, num_cols, cat_cols, policy) if policy else {}
    out: list[ColumnDrift] = []
    for c in num_cols + cat_cols:
        ctype = ColumnType.Numerical if c in num_cols else ColumnType.Categorical
        r = ref[c].replace([-np.inf, np.inf], np.nan).dropna()
        k = cur[c].replace([-np.inf, np.inf], np.nan).dropna()
        if k.empty or r.empty:
            continue
        plan = plans.get(c)
        test = get_stattest(r, k, ctype, plan.method if plan else None)
        res = test(r, k, ctype, plan.threshold if plan else None)
        out.append(
            ColumnDrift(
                column=c,
                kind="numeric" if c in num_cols else "categorical",
                method=test.name,
                score=float(res.drift_score),
                threshold=float(res.actual_threshold),
                drifted=bool(res.drifted),
                noise_threshold=plan.noise if plan else None,
                floor=plan.floor if plan else None,
            )
        )
    return dataset_verdict(len(cur), len(ref), out, share_threshold)


@dataclass
class Cell:
    ref_rows: int
    window_rows: int
    scenario: str  # "none" = i.i.d.
    windows: int
    ours_alarms: int
    ours_col_share: float
    ours_no_verdict: int
    default_alarms: int
    default_col_share: float
    default_flagged: str  # columns the defaults flagged most often
    seconds: float


def window(n: int, i: int, scenario: str | None = None):  # type: ignore[no-untyped-def]
    return synth.generate(n, seed=WINDOW_SEED0 + 7919 * i + n % 997, scenario=scenario)


def measure(
    ref_rows: int,
    n: int,
    windows: int,
    scenario: str | None = None,
    policy: DriftPolicy | None = None,
    defaults: bool = True,
) -> Cell:
    policy = policy or DriftPolicy()
    ref = synth.generate(ref_rows, seed=REF_SEED)
    t0 = time.monotonic()
    ours_alarm = def_alarm = no_verdict = 0
    ours_share: list[float] = []
    def_share: list[float] = []
    flagged: dict[str, int] = {}
    for i in range(windows):
        cur = window(n, i, scenario)
        r = fast_drift(cur, ref, NUM, CAT, policy)
        if not r.verdict:
            no_verdict += 1
        ours_alarm += int(r.dataset_drift)
        ours_share.append(r.drift_share or 0.0)
        if defaults:
            d = fast_drift(cur, ref, NUM, CAT, None)
            def_alarm += int(d.dataset_drift)
            def_share.append(d.drift_share or 0.0)
            for c in d.drifted_columns:
                flagged[c] = flagged.get(c, 0) + 1
    top = sorted(flagged.items(), key=lambda kv: -kv[1])[:4]
    return Cell(
        ref_rows=ref_rows,
        window_rows=n,
        scenario=scenario or "none",
        windows=windows,
        ours_alarms=ours_alarm,
        ours_col_share=float(np.mean(ours_share)),
        ours_no_verdict=no_verdict,
        default_alarms=def_alarm,
        default_col_share=float(np.mean(def_share)) if def_share else float("nan"),
        default_flagged=", ".join(f"{c} {k}/{windows}" for c, k in top),
        seconds=time.monotonic() - t0,
    )


def equivalence(ref_rows: int, n: int, scenario: str | None, i: int = 0) -> tuple[float, bool, bool]:
    """Max |score difference| and whether verdicts agree, Report vs fast path (policy, defaults)."""
    ref = synth.generate(ref_rows, seed=REF_SEED)
    cur = window(n, i, scenario)
    diff = 0.0
    same = []
    for pol in (DriftPolicy(), None):
        full = {c.column: c for c in evaluate_drift(cur, ref, NUM, CAT, pol).columns}
        fast = {c.column: c for c in fast_drift(cur, ref, NUM, CAT, pol).columns}
        assert full.keys() == fast.keys()
        for k in full:
            diff = max(diff, abs(full[k].score - fast[k].score), abs(full[k].threshold - fast[k].threshold))
        same.append(all(full[k].drifted == fast[k].drifted for k in full))
    return diff, same[0], same[1]


def table(cells: list[Cell], scenario: bool = False) -> str:
    head = (
        ("| scenario " if scenario else "")
        + "| reference | window rows | windows | ours: dataset alarms | ours: mean share of columns flagged | "
        "defaults: dataset alarms | defaults: mean share flagged | defaults flagged most |\n"
        + ("|---" if scenario else "")
        + "|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    rows = [
        (f"| {c.scenario} " if scenario else "")
        + f"| {c.ref_rows:,} | {c.window_rows:,} | {c.windows} | **{c.ours_alarms}**"
        f"{' (no verdict: ' + str(c.ours_no_verdict) + ')' if c.ours_no_verdict else ''} | "
        f"{100 * c.ours_col_share:.1f} % | {c.default_alarms} | {100 * c.default_col_share:.1f} % | "
        f"{c.default_flagged} |"
        for c in cells
    ]
    return head + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="measure drift detection quality")
    parser.add_argument("--out", type=Path, default=Path("results/drift_quality.md"))
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--big-windows", type=int, default=20, help="windows of 100,000 rows")
    args = parser.parse_args()
    t0 = time.monotonic()
    fa: list[Cell] = []
    det: list[Cell] = []
    for m in (500, 5000):
        for n in (100, 1000, 10_000, 100_000):
            fa.append(measure(m, n, args.big_windows if n == 100_000 else args.windows))
        for scen in ("covariate_attendance", "new_category"):
            for n in (100, 500, 1000, 10_000):
                det.append(measure(m, n, args.windows, scen))
    eq = [
        (m, n, s, *equivalence(m, n, s, i))
        for i, (m, n, s) in enumerate(
            [
                (500, 100, None),
                (5000, 1000, None),
                (500, 10_000, None),
                (5000, 500, "covariate_attendance"),
                (500, 1000, "new_category"),
            ]
        )
    ]
    text = TEMPLATE.format(
        false_alarms=table(fa),
        detection=table(det, scenario=True).replace("dataset alarms", "windows detected"),
        equivalence="\n".join(
            f"| {m:,} | {n:,} | {s or 'i.i.d.'} | {d:.2e} | {'yes' if a else 'NO'} | {'yes' if b else 'NO'} |"
            for m, n, s, d, a, b in eq
        ),
        seconds=time.monotonic() - t0,
        policy=DriftPolicy(),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)  # noqa: T201


TEMPLATE = """# Drift detection quality: the monitor's policy vs Evidently 0.7 defaults

Generated by `python -m gradeflow_testkit.drift_quality --out results/drift_quality.md` (evidently 0.7.23,
synthetic data of `gradeflow_shared.synth`: 14 features, 8 numeric and 6 categorical; total run time
{seconds:.0f} s on a shared 2-core machine). Reference: `synth.generate(m, seed=1)`; windows: other seeds.
Test: `testkit/tests/test_drift_quality.py` asserts the goals on the same windows (3 windows
of 100,000 rows instead of 20, 5 of 10,000 rows for detection).

**Policy** (`gradeflow_monitor.drift.DriftPolicy`; environment settings in capitals below): `{policy}`

* numeric columns: normed Wasserstein distance (W1 / std of the reference, Evidently `wasserstein`);
  categorical columns: Jensen-Shannon distance (Evidently `jensenshannon`). Both are effect sizes, not
  p-values: they do not grow with the sample size.
* per-column threshold = max(floor, noise quantile): floor 0.1 (NUM_DRIFT_FLOOR / CAT_DRIFT_FLOOR), the
  smallest shift worth acting on; noise quantile = the (1 - alpha) quantile (alpha 0.01, DRIFT_ALPHA) of the
  distance between two i.i.d. samples of the window's and the reference's sizes: Jensen-Shannon
  `sqrt(chi2_(k-1)(1-alpha) (1/n + 1/m) / 8)`; Wasserstein `Q sqrt(1/n + 1/m)`, Q simulated once per
  reference column from a Brownian bridge on the reference distribution. The thresholds are passed to
  Evidently per column (`DataDriftPreset(per_column_method=..., per_column_threshold=...)`).
* no verdict below MIN_WINDOW_ROWS (100) rows; dataset drift when >= 10 % of the columns drift
  (DRIFT_SHARE_THRESHOLD 0.1 = 2 of 14 columns).

**Defaults**: `DataDriftPreset()` as Evidently 0.7 picks it: reference <= 1,000 rows: K-S for numeric
columns with > 5 values, chi-square (> 2 values) or Z-test (2 values) otherwise, drift when p < 0.05;
reference > 1,000 rows: normed Wasserstein (> 5 values) or Jensen-Shannon, drift when >= 0.1; dataset
drift when >= 50 % of the columns drift.

## False alarms: windows drawn i.i.d. from the reference distribution

Goal: at most 1 dataset-level alarm in 20 windows at each size, at most 5 % of columns flagged on average.

{false_alarms}
## Detection: realistic shifts (severity 1)

`covariate_attendance`: attendance -25 points and absences up (2 of 14 columns move);
`new_category`: school_type 'online' for ~40 % of students with no commute. Goal: detected in at
least 19 of 20 windows from 500 rows up (100-row windows shown for information).

{detection}
## The figures come from Evidently's own functions

The table above uses Evidently's registered stattest functions directly (`get_stattest(...)(ref, cur,
type, threshold)`, as `ValueDrift` calls them, after the same NaN/inf clean-up) instead of building 100s
of Reports. On these windows the full `Report([DataDriftPreset(...)], include_tests=True)` gives the same:

| reference | window rows | window | max abs difference (scores, thresholds) | verdicts agree (policy) | verdicts agree (defaults) |
|---:|---:|---|---:|---|---|
{equivalence}

## Why the defaults fail and how the policy fixes it

* **p-values on big samples** (500-row reference): Evidently's chi-square test (columns with 3-5 values:
  parental_education, motivation) takes the reference's proportions as exact, so its statistic grows
  with the window while the reference's own sampling error stays: on i.i.d. windows of 1,000 rows and
  more it flags those columns nearly every time (binary columns use a Z-test, numeric ones K-S: these
  behaved). The policy's effect-size methods with a floor of 0.1 do not grow with n, and the noise part
  of the threshold includes the reference size (1/m), so a large window is not over-trusted against a
  small reference.
* **a fixed 0.1 distance on small windows** (5,000-row reference): the normed Wasserstein distance of two
  i.i.d. samples is about 0.8 sqrt(1/n + 1/m), i.e. ~0.08-0.1 at n = 100, so a third of the columns
  cross 0.1 by chance (commute_minutes, absences, previous_grade ...) and sometimes half of them, giving
  dataset alarms. The policy's threshold rises to the 99 % noise quantile for small windows (~0.2-0.3 at
  100 rows) and falls to the floor as windows grow; the flagged share stays near the nominal 1 % per
  column (measured 1.8-2.1 % at 100 rows, 0 % from 1,000 rows).
* **the dataset threshold**: a covariate shift rarely moves half of the features. Attendance moves 2 of
  14 columns, so the defaults' 50 % never calls it dataset drift, although both columns are flagged in
  every window. With per-column false alarms near 1 %, requiring 2 of 14 columns (10 %) keeps dataset
  alarms rare (one 100-row window of 20 for each reference, 1 of 40 windows when measured on 40) and
  catches the shift in every window from 100 rows up.
* **the minimum size**: below MIN_WINDOW_ROWS (100) no verdict is given. The calibrated thresholds keep
  100-row windows within the goal, so the minimum is not what hides false alarms; raise it (e.g. 300) to
  trade reaction time for fewer alarms on small, bursty traffic.
* **cost**: one Evidently Report with the policy on 5,000 rows takes ~0.3-1 s plus ~1 s once per reference
  for the simulated Wasserstein quantiles (cached per reference column).
"""


if __name__ == "__main__":
    main()
