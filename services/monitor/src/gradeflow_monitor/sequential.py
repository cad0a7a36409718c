"""The sequential test that decides a rollout: an always-valid confidence sequence on paired error differences.

Each labelled comparison gives ``d = |error of the champion| - |error of the challenger|`` (positive: the
challenger was closer). In shadow both models predicted the same request, so ``d`` is paired on it; in
canary the i-th labelled record the challenger answered is paired with the i-th one the champion answered
(different requests, independent pairs; the mean is still MAE(champion) - MAE(challenger)).

The confidence sequence is Robbins' normal mixture (Howard, Ramdas, McAuliffe & Sekhon 2021, "Time-uniform,
nonparametric, nonasymptotic confidence sequences", the two-sided normal-mixture boundary) with the
variance estimated from the data:

    mean(d) +- s * sqrt((n + n0) * log((n + n0) / (n0 * alpha^2))) / n

It holds at every n at once with probability >= 1 - alpha (exactly for Gaussian increments with known
variance; the plug-in ``s`` makes it approximate, which is why the rates are checked by simulation in
``tests/test_sequential.py``), so the monitor may look at it after every check without inflating errors.

Decisions, with ``margin`` the tolerated loss (grade points) and at least ``min_pairs`` comparisons:

* **promote** (shadow: advance to canary) when the lower bound > -margin: the challenger is at most
  ``margin`` worse. False-promotion rate (a challenger truly worse by ``margin`` or more is promoted):
  <= alpha / 2;
* **roll back** when the upper bound < 0: the challenger is worse. False-rollback rate (a challenger at
  least as good is rolled back): <= alpha / 2;
* otherwise continue (a challenger worse by less than ``margin`` may end either way: the indifference zone).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Action = Literal["promote", "rollback", "continue"]


@dataclass(frozen=True)
class Verdict:
    action: Action
    n: int
    mean: float | None  # mean(d): MAE(champion) - MAE(challenger); > 0 the challenger is better
    low: float | None
    high: float | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def half_width(s: float, n: int, alpha: float, n0: float) -> float:
    """The normal-mixture boundary divided by n (``n0``: the mixture's scale, in observations)."""
    return s * math.sqrt((n + n0) * math.log((n + n0) / (n0 * alpha**2))) / n


def decide(
    d: np.ndarray,
    *,
    alpha: float = 0.05,
    margin: float = 0.25,
    min_pairs: int = 30,
    n0: float = 100.0,
    sd_floor: float = 0.05,
) -> Verdict:
    """The decision on the differences seen so far (see the module docstring)."""
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n < max(2, min_pairs):
        return Verdict(
            "continue", n, float(d.mean()) if n else None, None, None, f"{n} of {min_pairs} comparisons"
        )
    mean = float(d.mean())
    s = max(float(d.std(ddof=1)), sd_floor)
    h = half_width(s, n, alpha, n0)
    low, high = mean - h, mean + h
    ci = f"MAE(champion) - MAE(challenger) = {mean:+.3f}, {1 - alpha:.0%} always-valid interval [{low:+.3f}, {high:+.3f}] on {n} comparisons"
    if high < 0:
        return Verdict("rollback", n, mean, low, high, f"the challenger is worse: {ci}")
    if low > -margin:
        return Verdict("promote", n, mean, low, high, f"the challenger is at most {margin:g} worse: {ci}")
    return Verdict("continue", n, mean, low, high, f"undecided: {ci}")
