"""How much the labelled production rows count: chosen by validation on the most recent of them.

A retrain has the base training rows and the labelled production training rows (oldest first;
the gate's holdout, the most recent rows of all, is already set aside and never seen here). The
candidate mixes:

* ``pooled``: base + production rows, every row counting once (the safe default);
* ``base_only``: the production rows are ignored;
* ``weighted_x0.5``, ``weighted_x1``, ``weighted_x3``: base + production rows, each production
  row weighted so that the production rows count 0.5, 1 or 3 times as much as the base rows in
  total (sample weights, not copies);
* ``production_only``: the base data is ignored;
* ``residual``: the base model plus a small random forest fitted on the production rows'
  residuals (realised as one averaging ``VotingRegressor`` of the two fitted on doubled
  targets, so the pipeline still compiles to ONNX).

``choose`` fits every candidate once, cheaply (the default model family, no search, at most
``CHEAP_TREES`` trees), on the base rows + the older ``1 - VALIDATION_SHARE`` of the production
rows and scores it (MAE) on the most recent ``VALIDATION_SHARE`` of them. The lowest MAE wins only when it
beats ``pooled`` by more than one standard error of the paired per-row differences (a one-SE
rule: a few dozen validation rows are noisy, and a confident wrong choice costs more than
pooling); else ``pooled`` is used. ``refit`` then fits the winner the usual way (search when
TRAIN_SEARCH) on all the production training rows. With fewer than ``MIN_VALIDATION_ROWS`` rows
to validate on, ``pooled`` is used without validation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor, VotingRegressor
from sklearn.pipeline import Pipeline

from . import pipeline as P

SHARES = (0.5, 1.0, 3.0)
CANDIDATES = ("pooled", "base_only", *(f"weighted_x{s:g}" for s in SHARES), "production_only", "residual")
DEFAULT = "pooled"
VALIDATION_SHARE = 0.3
MIN_VALIDATION_ROWS = 10
CHEAP_TREES = 100
RESIDUAL_PARAMS = {"n_estimators": 100, "min_samples_leaf": 5, "max_features": 0.5}

Fitter = Callable[..., P.FitResult]  # ``pipeline.fit`` or a stand-in with its signature


class Rows(NamedTuple):
    """The base training rows and the labelled production training rows (oldest first)."""

    Xb: pd.DataFrame
    yb: pd.Series
    Xp: pd.DataFrame
    yp: pd.Series


@dataclass(frozen=True)
class MixChoice:
    """The chosen mix, every candidate's validation MAE and why."""

    chosen: str
    scores: dict[str, float] = field(default_factory=dict)  # candidate -> validation MAE
    fit_rows: int = 0  # production rows the candidates were fitted on
    validation_rows: int = 0  # the most recent production rows they were scored on
    reason: str = ""

    def as_json(self) -> str:
        return json.dumps(
            {
                "chosen": self.chosen,
                "validation_mae": self.scores,
                "fit_rows": self.fit_rows,
                "validation_rows": self.validation_rows,
                "reason": self.reason,
            },
            indent=1,
        )


def production_row_weight(name: str, base_rows: int, production_rows: int) -> float:
    """The sample weight of each production row in a ``weighted_x<share>`` mix."""
    share = float(name.removeprefix("weighted_x"))
    return share * base_rows / max(1, production_rows)


def fixed(share: float) -> MixChoice:
    """A mix set by PRODUCTION_WEIGHT (no validation)."""
    return MixChoice(chosen=f"weighted_x{share:g}", reason=f"set by PRODUCTION_WEIGHT={share:g}")


def _cheap(n_rows: int) -> list[tuple[str, dict[str, Any]]]:
    family, params = P.search_space(n_rows)[0]
    p = dict(params)
    for k in [k for k in p if k.endswith("n_estimators")]:
        p[k] = min(int(p[k]), CHEAP_TREES)
    return [(family, p)]


def _residual_pipeline(base: Pipeline, Xp: pd.DataFrame, yp: pd.Series, seed: int) -> Pipeline:
    """``base`` (fitted on doubled targets) + a forest on doubled residuals, averaged = base + residual."""
    pre, base_model = base.named_steps["pre"], base.named_steps["model"]
    Zp = pre.transform(Xp)
    resid = 2.0 * np.asarray(yp, dtype=float) - np.asarray(base_model.predict(Zp), dtype=float)
    small = RandomForestRegressor(random_state=seed, n_jobs=1, **RESIDUAL_PARAMS)
    small.fit(Zp, resid)
    vote = VotingRegressor([("base", base_model), ("residual", small)], n_jobs=1)
    vote.estimators_ = [base_model, small]
    vote.named_estimators_ = {"base": base_model, "residual": small}  # type: ignore[assignment]
    return Pipeline([("pre", pre), ("model", vote)])


def refit(
    name: str,
    rows: Rows,
    columns: Sequence[Any],
    *,
    seed: int = 0,
    search: bool = True,
    fitter: Fitter = P.fit,
    progress: Any = None,
    candidates: list[tuple[str, dict[str, Any]]] | None = None,
) -> P.FitResult:
    """Fit mix ``name`` on the base and production rows with ``fitter``."""
    Xb, yb, Xp, yp = rows
    kw: dict[str, Any] = {"seed": seed, "search": search, "progress": progress}
    if candidates is not None:
        kw["candidates"] = candidates
    if name == "base_only":
        return fitter(Xb, yb, columns, **kw)
    if name == "production_only":
        return fitter(Xp, yp, columns, **kw)
    if name == "pooled":
        return fitter(
            pd.concat([Xb, Xp], ignore_index=True), pd.concat([yb, yp], ignore_index=True), columns, **kw
        )
    if name == "residual":
        base = fitter(Xb, 2.0 * yb, columns, **kw)
        pipe = _residual_pipeline(base.pipeline, P.prepare_frame(Xp, columns), yp, seed)
        cv = {k: v / 2.0 for k, v in base.cv_rmse.items()}
        return P.FitResult(pipe, base.family, dict(base.params), cv, base.seconds)
    if not name.startswith("weighted_x"):
        raise ValueError(f"unknown production mix '{name}' (known: {', '.join(CANDIDATES)})")
    w = production_row_weight(name, len(Xb), len(Xp))
    X = pd.concat([Xb, Xp], ignore_index=True)
    y = pd.concat([yb, yp], ignore_index=True)
    weights = np.concatenate([np.ones(len(Xb)), np.full(len(Xp), w)])
    return fitter(X, y, columns, sample_weight=weights, **kw)


def pick(errors: dict[str, np.ndarray]) -> tuple[str, str]:
    """The winner among the candidates' per-row validation |errors| (one-SE rule against DEFAULT), and why."""
    scores = {name: float(e.mean()) for name, e in errors.items()}
    best = min(errors, key=lambda c: scores[c])
    ranked = ", ".join(f"{c} {scores[c]:.3f}" for c in sorted(errors, key=lambda c: scores[c]))
    where = f"MAE on the {len(errors[best])} most recent production training rows ({ranked})"
    if best != DEFAULT and DEFAULT in errors:
        diff = errors[DEFAULT] - errors[best]
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
        if diff.mean() <= se:
            return DEFAULT, (
                f"{best} not better than {DEFAULT} by more than one standard error "
                f"({diff.mean():.3f} <= {se:.3f}); {where}"
            )
    return best, f"lowest {where}"


def choose(
    rows: Rows,
    columns: Sequence[Any],
    *,
    seed: int = 0,
    fitter: Fitter = P.fit,
    report: Callable[[str, float], None] | None = None,
) -> MixChoice:
    """Score every candidate mix on the most recent production rows (module docstring)."""
    Xb, yb, Xp, yp = rows
    n_val = int(round(len(Xp) * VALIDATION_SHARE))
    n_fit = len(Xp) - n_val
    if n_val < MIN_VALIDATION_ROWS or n_fit < 1:
        return MixChoice(
            chosen=DEFAULT,
            fit_rows=len(Xp),
            reason=f"{len(Xp)} production training rows: too few to validate on "
            f"(< {MIN_VALIDATION_ROWS} recent rows), {DEFAULT} used",
        )
    Xf, yf = Xp.iloc[:n_fit].reset_index(drop=True), yp.iloc[:n_fit].reset_index(drop=True)
    Xv, yv = Xp.iloc[n_fit:].reset_index(drop=True), yp.iloc[n_fit:].reset_index(drop=True)
    Xv_prep = P.prepare_frame(Xv, columns)
    cheap = _cheap(len(Xb) + len(Xp))
    errors: dict[str, np.ndarray] = {}
    for i, name in enumerate(CANDIDATES):
        if report:
            report(f"validate mix {name}", i / len(CANDIDATES))
        fitted = refit(
            name, Rows(Xb, yb, Xf, yf), columns, seed=seed, search=False, fitter=fitter, candidates=cheap
        )
        errors[name] = np.abs(np.asarray(fitted.pipeline.predict(Xv_prep), dtype=float) - yv.to_numpy(float))
    chosen, reason = pick(errors)
    scores = {name: float(e.mean()) for name, e in errors.items()}
    return MixChoice(chosen=chosen, scores=scores, fit_rows=n_fit, validation_rows=n_val, reason=reason)
