"""Model performance on the labelled part of the window, against the model's performance baseline.

The baseline is the manifest's ``performance_baseline``: after a promotion decided on the recent
labelled holdout it is the model's error there (the population it now serves), else its base test
error. Exports written before the field existed give the base test MAE from ``metrics`` (as before).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from gradeflow_shared.manifest import Manifest, PerformanceBaseline, performance_baseline


@dataclass
class PerformanceResult:
    labelled_rows: int
    mae: float | None
    rmse: float | None
    test_mae: float | None  # the base holdout's (manifest metrics), for reference
    test_rmse: float | None
    baseline_mae: float | None  # what the window is judged against
    baseline_rmse: float | None
    baseline_set: str | None  # recent_labelled | base_holdout
    baseline_rows: int | None
    baseline_measured_at: str | None
    ratio: float | None  # window MAE / baseline MAE
    degradation_ratio: float
    min_labelled_rows: int
    degraded: bool
    reason: str

    @property
    def has_verdict(self) -> bool:
        """Enough labelled rows and a baseline: the verdict (degraded or not) means something."""
        return self.ratio is not None and self.labelled_rows >= self.min_labelled_rows

    def figures(self) -> dict[str, float]:
        """The numeric figures (for DriftVerdict.performance and the run record)."""
        out: dict[str, float] = {"labelled_rows": float(self.labelled_rows)}
        for k in ("mae", "rmse", "test_mae", "test_rmse", "baseline_mae", "baseline_rmse", "ratio"):
            v = getattr(self, k)
            if v is not None:
                out[k] = float(v)
        if self.baseline_rows is not None:
            out["baseline_rows"] = float(self.baseline_rows)
        out["degradation_ratio"] = float(self.degradation_ratio)
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def baseline_of(manifest: Manifest | None) -> PerformanceBaseline | None:
    """The manifest's performance baseline (older manifests: the base test MAE of ``metrics``)."""
    return manifest.baseline() if manifest is not None else None


def evaluate_performance(
    window: pd.DataFrame,
    test_metrics: dict[str, float],
    degradation_ratio: float,
    min_labelled_rows: int,
    baseline: PerformanceBaseline | None = None,
) -> PerformanceResult:
    """MAE/RMSE of ``prediction`` vs ``actual`` on the labelled rows of the window.

    Degraded when at least ``min_labelled_rows`` rows are labelled and window MAE >
    ``degradation_ratio`` x the baseline MAE (``baseline``; None: the test MAE of ``test_metrics``).
    This catches concept drift (y|x changes) that feature drift cannot see.
    """
    test_mae = test_metrics.get("mae")
    test_rmse = test_metrics.get("rmse")
    if baseline is None:
        baseline = performance_baseline(test_metrics, "base_holdout")
    base_mae = baseline.mae if baseline else None
    if "actual" in window and "prediction" in window:
        lab = window[window["actual"].notna()]
        err = lab["prediction"].astype(float).to_numpy() - lab["actual"].astype(float).to_numpy()
    else:
        err = np.array([])
    n = int(len(err))
    mae = float(np.mean(np.abs(err))) if n else None
    rmse = float(np.sqrt(np.mean(err**2))) if n else None
    ratio = mae / base_mae if (mae is not None and base_mae) else None
    what = ""
    if baseline is not None:
        rows = f", {baseline.rows} rows" if baseline.rows is not None else ""
        what = f"baseline MAE {baseline.mae:.3f} ({baseline.evaluation_set}{rows})"
    if n < min_labelled_rows:
        degraded, reason = False, f"{n} labelled rows < minimum {min_labelled_rows}: no performance verdict"
    elif base_mae is None or ratio is None:
        degraded, reason = False, "the manifest has no baseline MAE to compare with"
    elif ratio > degradation_ratio:
        degraded = True
        reason = f"window MAE {mae:.3f} = {ratio:.2f} x {what} > {degradation_ratio:g} x"
    else:
        degraded = False
        reason = f"window MAE {mae:.3f} = {ratio:.2f} x {what} <= {degradation_ratio:g} x"
    return PerformanceResult(
        labelled_rows=n,
        mae=mae,
        rmse=rmse,
        test_mae=test_mae,
        test_rmse=test_rmse,
        baseline_mae=base_mae,
        baseline_rmse=baseline.rmse if baseline else None,
        baseline_set=baseline.evaluation_set if baseline else None,
        baseline_rows=baseline.rows if baseline else None,
        baseline_measured_at=baseline.measured_at.isoformat() if baseline and baseline.measured_at else None,
        ratio=ratio,
        degradation_ratio=degradation_ratio,
        min_labelled_rows=min_labelled_rows,
        degraded=degraded,
        reason=reason,
    )
