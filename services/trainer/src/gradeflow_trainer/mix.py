"""Choose the training mix by validation on the newer labelled production rows, not a fixed weight.

After a shift, how much should the labelled production rows count against the base data, and is
the base data worth using at all? The answer depends on the shift, so it is measured. The
candidates (``candidates``):

* ``weight_1``, ``weight_3``, ``weight_10``: base + production rows, each production row with
  that sample weight;
* ``balanced``: production rows weighted so that they count as much as the base rows together
  (``n_base / n_production``, uncapped);
* ``base_only``: the base rows alone (the production rows do not help);
* ``production_only``: the production rows alone (the base data is no longer relevant);
* ``residual_boost``: a gradient-boosted model of the base data, then more boosting stages fitted
  on the production rows only (a model of the base model's residual on production). It is one
  ``GradientBoostingRegressor`` (warm start), so it exports to joblib and ONNX exactly like any
  other pipeline: no custom estimator reaches inference.

Validation never touches the gate's held-out recent rows (they decide the promotion): the
*training* production rows, oldest first, are cut into ``k + 1`` time-ordered chunks; fold ``i``
fits on the base rows + chunks ``0..i`` and predicts chunk ``i + 1`` (expanding window, the
way the model is used: trained on the past, judged on what comes next). Validation predictions
of all folds are pooled into one MAE and RMSE per candidate. It is cheap: a fast model (the
default family of ``pipeline.search_space`` with ``EVAL_TREES`` trees, the base rows subsampled
to ``EVAL_BASE_ROWS``, the production weights scaled to keep the balance); the chosen mix is then
fitted with the normal ``fit`` (search as configured) on all training rows; ``residual_boost`` is
fitted as validated (``fit_residual``). Each candidate is scored in the family it is fitted with,
so ``residual_boost`` (boosted trees) competes only when its stages on production improve its own
base model by more than ``RESIDUAL_MIN_GAIN``: else a family difference, not the mix, would decide.

The default ``weight_1`` is kept unless another candidate beats its validation MAE by more than
``SELECT_TOLERANCE`` and by more than ``SELECT_Z`` standard errors of the paired per-row
differences (a few dozen validation rows are noisy); among those that do, the lowest MAE wins.
With fewer training production rows than ``MIX_MIN_ROWS`` (or ``TRAIN_MIX`` off) there is no
selection: the fixed PRODUCTION_WEIGHT rule, as before, and the mix says so.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from gradeflow_shared.contracts import MixScore, TrainingMix
from gradeflow_shared.datasets import ColumnSpec

from .pipeline import FitResult, build_pipeline, prepare_frame

logger = logging.getLogger(__name__)

EVAL_TREES = 40  # trees of the fast evaluation forest
EVAL_BASE_ROWS = 1000  # base rows used by the fast evaluation (subsampled above this)
# the default mix (weight_1) stays unless another beats its validation MAE by more than 1 % AND by more
# than SELECT_Z standard errors of the paired per-row differences (a few dozen rows are noisy)
SELECT_TOLERANCE = 0.01
SELECT_Z = 1.64
RESIDUAL_MIN_GAIN = 0.05  # residual_boost must beat its own base model (no stages) by this much to compete
BOOSTED_BASE = "boosted_base_only"  # the residual model's base alone: scored for reference, never chosen
WEIGHTS = (1.0, 3.0, 10.0)

# the residual model: a boosted model of the base data, then boosting stages on the production rows
RESIDUAL_BASE = {"n_estimators": 200, "learning_rate": 0.05, "max_depth": 3, "subsample": 0.8}
RESIDUAL_STAGES = {"n_estimators": 100, "max_depth": 2, "min_samples_leaf": 5}


@dataclass(frozen=True)
class Mix:
    """One way to mix base and production rows."""

    name: str
    kind: str  # "weighted", "production_only" or "residual"
    weight: float = 1.0  # sample weight of each production row ("weighted")


@dataclass(frozen=True)
class MixChoice:
    """The chosen mix and the evidence (the report lands in the run, the result and the job)."""

    mix: Mix
    report: TrainingMix
    seconds: float = 0.0
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (val MAE, val RMSE)


def candidates(n_base: int, n_prod: int, extra_weight: float | None = None) -> list[Mix]:
    """The candidate mixes for ``n_base`` base and ``n_prod`` production training rows. The first,
    ``weight_1`` (every row counts the same), is the default a challenger must clearly beat.
    ``extra_weight`` (an explicit PRODUCTION_WEIGHT) is added when it is not listed already."""
    out: list[Mix] = []
    seen: set[float] = set()

    def add(m: Mix) -> None:
        if m.kind == "weighted":
            key = round(m.weight, 6)
            if key in seen:
                return
            seen.add(key)
        out.append(m)

    for w in WEIGHTS:
        add(Mix(f"weight_{w:g}", "weighted", w))
    add(Mix("balanced", "weighted", n_base / max(1, n_prod)))
    if extra_weight:
        add(Mix(f"weight_{extra_weight:g}", "weighted", float(extra_weight)))
    add(Mix("base_only", "base_only"))
    add(Mix("production_only", "production_only"))
    add(Mix("residual_boost", "residual"))
    return out


def time_folds(n: int, k: int) -> list[tuple[int, int, int]]:
    """Expanding-window folds over ``n`` time-ordered rows: ``(fit_end, val_start, val_end)``,
    fit on rows ``[0, fit_end)``, validate on ``[val_start, val_end)`` with ``val_start == fit_end``."""
    k = max(1, min(k, n - 1))
    cuts = [round(i * n / (k + 1)) for i in range(k + 2)]
    return [(cuts[i], cuts[i], cuts[i + 1]) for i in range(1, k + 1) if cuts[i + 1] > cuts[i] > 0]


def _fast_pipeline(columns: Sequence[ColumnSpec], seed: int, n_rows: int) -> Pipeline:
    """A cheaper version of the default (non-search) model for ``n_rows`` training rows."""
    if n_rows > 2000:  # the default for large data is boosted trees (see ``pipeline.search_space``)
        params = {"n_estimators": EVAL_TREES, "learning_rate": 0.15, "max_depth": 3, "subsample": 0.8}
        return build_pipeline(columns, "gbr", params, seed)
    return build_pipeline(columns, "rf", {"n_estimators": EVAL_TREES, "max_features": 0.5}, seed)


def residual_boost(
    Xb: pd.DataFrame,
    yb: pd.Series,
    Xp: pd.DataFrame,
    yp: pd.Series,
    columns: Sequence[ColumnSpec],
    seed: int = 0,
    base: Pipeline | None = None,
) -> Pipeline:
    """A boosted model of the base rows continued with stages fitted on the production rows only.

    ``base`` (a pipeline fitted by ``residual_base``) is copied, not changed. The result is one
    plain ``Pipeline`` + ``GradientBoostingRegressor``: joblib and skl2onnx export it as usual.
    """
    pipe = copy.deepcopy(base) if base is not None else residual_base(Xb, yb, columns, seed)
    gbr = pipe.named_steps["model"]
    stages = dict(RESIDUAL_STAGES)
    gbr.set_params(warm_start=True, n_estimators=gbr.n_estimators + stages.pop("n_estimators"), **stages)
    Xt = pipe.named_steps["pre"].transform(prepare_frame(Xp, columns))
    gbr.fit(Xt, np.asarray(yp, dtype=float))
    gbr.set_params(warm_start=False)
    return pipe


def residual_base(Xb: pd.DataFrame, yb: pd.Series, columns: Sequence[ColumnSpec], seed: int = 0) -> Pipeline:
    pipe = build_pipeline(columns, "gbr", RESIDUAL_BASE, seed)
    pipe.fit(prepare_frame(Xb, columns), np.asarray(yb, dtype=float))
    return pipe


def fit_residual(
    X_train: pd.DataFrame, y_train: pd.Series, base_rows: int, columns: Sequence[ColumnSpec], seed: int = 0
) -> FitResult:
    """The ``residual_boost`` mix fitted for real: ``X_train`` = base rows first, then production rows."""
    t0 = time.monotonic()
    pipe = residual_boost(
        X_train.iloc[:base_rows],
        y_train.iloc[:base_rows],
        X_train.iloc[base_rows:],
        y_train.iloc[base_rows:],
        columns,
        seed,
    )
    params = {**RESIDUAL_BASE, **{f"residual_{k}": v for k, v in RESIDUAL_STAGES.items()}}
    return FitResult(pipeline=pipe, family="gbr", params=params, seconds=time.monotonic() - t0)


def _pooled(y: list[np.ndarray], p: list[np.ndarray]) -> tuple[float, float]:
    yy, pp = np.concatenate(y), np.concatenate(p)
    return float(np.mean(np.abs(yy - pp))), float(math.sqrt(np.mean((yy - pp) ** 2)))


def choose(
    Xb: pd.DataFrame,
    yb: pd.Series,
    Xp: pd.DataFrame,
    yp: pd.Series,
    columns: Sequence[ColumnSpec],
    extra_weight: float | None = None,
    seed: int = 0,
    folds: int = 3,
) -> MixChoice:
    """Score every candidate on time-ordered folds of the production rows (oldest first) and pick one."""
    t0 = time.monotonic()
    n_base, n_prod = len(Xb), len(Xp)
    cands = candidates(n_base, n_prod, extra_weight)
    Xp = prepare_frame(Xp, columns).reset_index(drop=True)
    yp = pd.Series(np.asarray(yp, dtype=float))
    # the fast evaluation: base rows subsampled, production weights scaled to keep the same balance
    Xbe, ybe = prepare_frame(Xb, columns).reset_index(drop=True), pd.Series(np.asarray(yb, dtype=float))
    scale = 1.0
    if n_base > EVAL_BASE_ROWS:
        idx = np.random.default_rng(seed).choice(n_base, EVAL_BASE_ROWS, replace=False)
        Xbe, ybe = Xbe.iloc[idx].reset_index(drop=True), ybe.iloc[idx].reset_index(drop=True)
        scale = EVAL_BASE_ROWS / n_base
    fold_list = time_folds(n_prod, folds)
    res_base = residual_base(Xbe, ybe, columns, seed)
    n_rows = n_base + n_prod  # the size the chosen mix is fitted on decides the default family
    base_only: Pipeline | None = None
    names = [m.name for m in cands] + [BOOSTED_BASE]
    ys: dict[str, list[np.ndarray]] = {n: [] for n in names}
    ps: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for fit_end, v0, v1 in fold_list:
        Xf, yf = Xp.iloc[:fit_end], yp.iloc[:fit_end]
        Xv, yv = Xp.iloc[v0:v1], yp.iloc[v0:v1].to_numpy()
        for m in cands:
            if m.kind == "residual":
                pipe = residual_boost(Xbe, ybe, Xf, yf, columns, seed, base=res_base)
            elif m.kind == "production_only":
                pipe = _fast_pipeline(columns, seed, n_rows).fit(Xf, yf)
            elif m.kind == "base_only":  # the same for every fold
                pipe = (
                    base_only
                    if base_only is not None
                    else _fast_pipeline(columns, seed, n_rows).fit(Xbe, ybe)
                )
                base_only = pipe
            else:
                X = pd.concat([Xbe, Xf], ignore_index=True)
                y = pd.concat([ybe, yf], ignore_index=True)
                w = np.concatenate([np.ones(len(Xbe)), np.full(len(Xf), m.weight * scale)])
                pipe = _fast_pipeline(columns, seed, n_rows).fit(X, y, model__sample_weight=w)
            ys[m.name].append(yv)
            ps[m.name].append(np.asarray(pipe.predict(Xv), dtype=float))
        ys[BOOSTED_BASE].append(yv)
        ps[BOOSTED_BASE].append(np.asarray(res_base.predict(Xv), dtype=float))
    scores = {n: _pooled(ys[n], ps[n]) for n in names}
    n_val = sum(v1 - v0 for _, v0, v1 in fold_list)
    default = cands[0]
    # the residual model is boosted trees, the others the default family: it competes only when its
    # production stages really help its own base (else a family difference, not the mix, would decide)
    res_gain = 1.0 - scores["residual_boost"][0] / max(scores[BOOSTED_BASE][0], 1e-12)
    eligible = [m for m in cands if m.kind != "residual" or res_gain > RESIDUAL_MIN_GAIN]
    best = min(eligible, key=lambda m: scores[m.name][0])
    err_def = np.abs(np.concatenate(ys[default.name]) - np.concatenate(ps[default.name]))

    def clearly_better(m: Mix) -> bool:
        d = err_def - np.abs(np.concatenate(ys[m.name]) - np.concatenate(ps[m.name]))
        se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("inf")
        return float(d.mean()) > max(SELECT_TOLERANCE * scores[default.name][0], SELECT_Z * se)

    winners = [m for m in eligible if m is not default and clearly_better(m)]
    chosen = min(winners, key=lambda m: scores[m.name][0]) if winners else default
    why = (
        f"lowest validation MAE {scores[chosen.name][0]:.3f} of the mixes clearly better than the default "
        f"{default.name} ({scores[default.name][0]:.3f})"
        if chosen is not default
        else f"default kept: validation MAE {scores[default.name][0]:.3f}; no other mix beats it by more than "
        f"{SELECT_TOLERANCE:.0%} and {SELECT_Z} paired standard errors (best: {best.name} "
        f"{scores[best.name][0]:.3f})"
    )
    reason = (
        f"{chosen.name} chosen on {len(fold_list)} time-ordered folds of the {n_prod} older labelled "
        f"production rows ({n_val} validation rows; the gate's recent rows not used): {why}; residual_boost "
        f"{'competed' if res_gain > RESIDUAL_MIN_GAIN else 'left out'} (its stages on production improve its "
        f"base by {res_gain:.0%}, needs > {RESIDUAL_MIN_GAIN:.0%})"
    )
    secs = time.monotonic() - t0
    kind = chosen.kind
    report = TrainingMix(
        chosen=chosen.name,
        kind=kind,  # type: ignore[arg-type]
        production_weight=chosen.weight if kind == "weighted" else (1.0 if kind == "residual" else 0.0),
        reason=reason,
        selected=True,
        candidates=[
            MixScore(name=n, val_mae=scores[n][0], val_rmse=scores[n][1], validation_rows=n_val)
            for n in names
        ],
    )
    logger.info(
        "training mix: %s in %.1fs; validation MAE %s",
        reason,
        secs,
        ", ".join(f"{k} {v[0]:.3f}" for k, v in scores.items()),
    )
    return MixChoice(mix=chosen, report=report, seconds=secs, scores=scores)


def fixed(weight: float, why: str) -> MixChoice:
    """No selection: the fixed production weight of earlier versions (``why`` says why)."""
    report = TrainingMix(
        chosen="auto_weight",
        kind="weighted",
        production_weight=float(weight),
        reason=f"fixed production weight {weight:g} (no validation: {why})",
        selected=False,
    )
    logger.info("training mix: %s", report.reason)
    return MixChoice(mix=Mix("auto_weight", "weighted", float(weight)), report=report)


def as_params(report: TrainingMix) -> tuple[dict[str, Any], dict[str, float], dict[str, str]]:
    """(params, metrics, tags) of the run for a mix report."""
    params: dict[str, Any] = {
        "mix": report.chosen,
        "mix_kind": report.kind,
        "mix_selected": report.selected,
        "mix_production_weight": round(report.production_weight, 4),
    }
    metrics = {f"mix_{c.name}_val_mae": c.val_mae for c in report.candidates}
    metrics.update({f"mix_{c.name}_val_rmse": c.val_rmse for c in report.candidates})
    if report.candidates:
        metrics["mix_validation_rows"] = float(report.candidates[0].validation_rows)
    tags = {"gradeflow.mix": report.chosen, "gradeflow.mix_reason": report.reason[:4000]}
    return params, metrics, tags
