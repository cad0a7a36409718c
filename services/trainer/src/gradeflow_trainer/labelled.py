"""Labelled production rows are privileged input: every row pulled from inference is re-checked.

A label moves the model, so the trainer does not trust what ``GET /predictions?labelled=true``
answers. A row is dropped, and counted under the first rule it breaks, when:

* ``malformed``: it is not an object, its ``id`` is not an integer or its ``features`` not an object;
* ``request_id_missing``: it has no request id, or an empty one;
* ``request_id_duplicate``: its request id was already seen in this pull (the oldest row is kept);
* ``label_not_finite``: its label is not a finite number (missing, NaN, infinite, a string, a boolean);
* ``label_out_of_range``: its label is outside the target's declared bounds (the dataset spec's
  ``target_min`` / ``target_max``, 0-20 for grades);
* ``feature_invalid``: a feature breaks what the dataset spec declares for it: numeric features
  take finite numbers (integral ones for ``int``, true/false for ``bool``) inside ``min`` / ``max``,
  categorical features take strings. A missing value (``null`` or no key) is allowed: the pipeline
  imputes it, as for the base data. Unseen categories are allowed (the encoder ignores them).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from gradeflow_shared.datasets import ColumnSpec, DatasetSpec

from .pipeline import prepare_frame

REASONS = (
    "malformed",
    "request_id_missing",
    "request_id_duplicate",
    "label_not_finite",
    "label_out_of_range",
    "feature_invalid",
)


@dataclass(frozen=True)
class LabelledRows:
    """The rows that passed, oldest first, and how many were dropped for each reason."""

    X: pd.DataFrame
    y: pd.Series
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())


def _number(v: Any) -> float | None:
    """``v`` as a finite float when it is a real JSON number (not a boolean, not a string)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    x = float(v)
    return x if math.isfinite(x) else None


def _inside(x: float, lo: float | None, hi: float | None) -> bool:
    return (lo is None or x >= lo) and (hi is None or x <= hi)


def _feature_ok(col: ColumnSpec, v: Any) -> bool:
    if v is None:
        return True
    if col.kind == "categorical":
        return isinstance(v, str)
    if col.dtype == "bool":
        return isinstance(v, bool)
    x = _number(v)
    if x is None or (col.dtype == "int" and not x.is_integer()):
        return False
    return _inside(x, col.min, col.max)


def row_problem(row: Any, spec: DatasetSpec, columns: list[ColumnSpec], seen: set[str]) -> str | None:
    """The reason ``row`` (one item of a prediction page, as JSON) is refused, or None."""
    if not isinstance(row, dict) or not isinstance(row.get("features"), dict):
        return "malformed"
    if isinstance(row.get("id"), bool) or not isinstance(row.get("id"), int):
        return "malformed"
    rid = row.get("request_id")
    if not isinstance(rid, str) or not rid.strip():
        return "request_id_missing"
    if rid in seen:
        return "request_id_duplicate"
    seen.add(rid)
    label = _number(row.get("actual"))
    if label is None:
        return "label_not_finite"
    if not _inside(label, spec.target_min, spec.target_max):
        return "label_out_of_range"
    features = row["features"]
    if not all(_feature_ok(c, features.get(c.name)) for c in columns):
        return "feature_invalid"
    return None


def clean_labelled(
    rows: Iterable[Any], spec: DatasetSpec, columns: list[ColumnSpec], max_rows: int
) -> LabelledRows:
    """Check every row (module docstring), keep the ``max_rows`` most recent good ones, oldest first."""

    def order(row: Any) -> int:
        rid = row.get("id") if isinstance(row, dict) else None
        return rid if isinstance(rid, int) and not isinstance(rid, bool) else -1

    seen: set[str] = set()
    dropped: Counter[str] = Counter()
    good: list[dict[str, Any]] = []
    for row in sorted(rows, key=order):
        problem = row_problem(row, spec, columns, seen)
        if problem is not None:
            dropped[problem] += 1
            continue
        good.append({**row["features"], "__actual": float(row["actual"])})
    good = good[-max_rows:]
    df = pd.DataFrame(good, columns=[*(c.name for c in columns), "__actual"])
    y = pd.Series(df["__actual"].to_numpy(dtype=float))
    return LabelledRows(X=prepare_frame(df, columns).reset_index(drop=True), y=y, dropped=dict(dropped))
