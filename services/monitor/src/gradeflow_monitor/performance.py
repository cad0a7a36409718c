"""Model performance on the labelled part of the window, against the model's own test metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class PerformanceResult:
    labelled_rows: int
    mae: float | None
    rmse: float | None
    test_mae: float | None
    test_rmse: float | None
    ratio: float | None  # window MAE / test MAE
    degradation_ratio: float
    min_labelled_rows: int
    degraded: bool
    reason: str

    def figures(self) -> dict[str, float]:
        """The numeric figures (for DriftVerdict.performance and the run record)."""
        out: dict[str, float] = {"labelled_rows": float(self.labelled_rows)}
        for k in ("mae", "rmse", "test_mae", "test_rmse", "ratio"):
            v = getattr(self, k)
            if v is not None:
                out[k] = float(v)
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_performance(
    window: pd.DataFrame,
    test_metrics: dict[str, float],
    degradation_ratio: float,
    min_labelled_rows: int,
) -> PerformanceResult:
    """MAE/RMSE of ``prediction`` vs ``actual`` on the labelled rows of the window.

    Degraded when at least ``min_labelled_rows`` rows are labelled and window MAE >
    ``degradation_ratio`` x the test MAE in the manifest. This catches concept drift (y|x changes)
    that feature drift cannot see.
    """
    test_mae = test_metrics.get("mae")
    test_rmse = test_metrics.get("rmse")
    if "actual" in window and "prediction" in window:
        lab = window[window["actual"].notna()]
        err = lab["prediction"].astype(float).to_numpy() - lab["actual"].astype(float).to_numpy()
    else:
        err = np.array([])
    n = int(len(err))
    mae = float(np.mean(np.abs(err))) if n else None
    rmse = float(np.sqrt(np.mean(err**2))) if n else None
    ratio = mae / test_mae if (mae is not None and test_mae) else None
    if n < min_labelled_rows:
        degraded, reason = False, f"{n} labelled rows < minimum {min_labelled_rows}: no performance verdict"
    elif test_mae is None or ratio is None:
        degraded, reason = False, "the manifest has no test MAE to compare with"
    elif ratio > degradation_ratio:
        degraded = True
        reason = f"window MAE {mae:.3f} = {ratio:.2f} x test MAE {test_mae:.3f} > {degradation_ratio:g} x"
    else:
        degraded = False
        reason = f"window MAE {mae:.3f} = {ratio:.2f} x test MAE {test_mae:.3f} <= {degradation_ratio:g} x"
    return PerformanceResult(
        labelled_rows=n,
        mae=mae,
        rmse=rmse,
        test_mae=test_mae,
        test_rmse=test_rmse,
        ratio=ratio,
        degradation_ratio=degradation_ratio,
        min_labelled_rows=min_labelled_rows,
        degraded=degraded,
        reason=reason,
    )
