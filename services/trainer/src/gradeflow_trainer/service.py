"""The trainer's flows as plain functions: train once, promote, roll back, describe the champion.

``train_once`` chains four stages, each a plain function with typed inputs and outputs:

1. ``assemble_data``: load + validate the base dataset, pull the labelled production rows,
   split (base holdout; the most recent production rows held out for the gate) -> ``TrainingData``;
2. ``fit_candidate``: fit, evaluate on every evaluation set (MAE, RMSE, R2, naive baseline),
   then (REFIT_ON_ALL_ROWS) refit the same mix, family and hyper-parameters on the training rows +
   the recent labelled holdout (+ the base holdout, REFIT_ON_BASE_HOLDOUT) -> ``Candidate`` (the refit
   is registered, exported and served; the metrics, the gate's per-row predictions and the monitor's
   baseline are those of the fit before);
3. ``register_candidate``: log the run (params, metrics, inputs, plots, export artifacts) and
   register the model as a new version -> ``registry.Registered``;
4. ``decide_and_publish``: approval gate (``gate.decide``) against the champion evaluated on
   the SAME data (on the recent labelled rows both models' per-row predictions, for the paired
   evidence; on the base holdout, for a champion refitted on it, its error recorded before that refit:
   ``gate.champion_base``) -> decision tags on the version -> on promotion the champion change as one
   transaction (``promotion.publish``: intent, staged export, alias, ONE promotion event,
   ``current``, champion marker) -> the decision on the run.

The registry is any ``registry.Registry`` (``MlflowRegistry`` in the service, ``InMemoryRegistry``
in unit tests). One lock serialises every change of the champion (gate, promote, rollback), so a
manual promotion cannot interleave with the end of a training job.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradeflow_shared import manifest as mf
from gradeflow_shared.contracts import (
    GateDecision,
    RetrainRequest,
    TrainingMix,
    TrainResult,
)
from gradeflow_shared.datasets import ColumnSpec, DatasetSpec, fingerprint, load_dataset, load_spec
from gradeflow_shared.errors import Conflict, ExportError, GradeflowError, UpstreamError
from gradeflow_shared.http import ServiceClient

from . import gate, rollout
from . import history as hist
from . import mix as mixing
from . import promotion as pr
from .config import TrainerSettings
from .export import export_model, kept_export, load_export
from .feature_source import lineage_params
from .jobs import current_job_id
from .labelled import REASONS, LabelledRows, clean_labelled
from .pipeline import FitResult, evaluate, fit, naive_metrics, split
from .progress import Progress, no_progress
from .registry import ALIAS, JOB_TAG, LoggedInput, Registered, Registry, RunRecord

logger = logging.getLogger(__name__)

CHAMPION_LOCK = threading.RLock()
PAGE_LIMIT = 1000
EvalSets = dict[str, tuple[pd.DataFrame, pd.Series]]


history = pr.history  # the history file: a view of the registry's promotion events (``history``)


def mlflow_registry(settings: TrainerSettings) -> Registry:
    """The service's registry: the MLflow server of MLFLOW_TRACKING_URI."""
    from .mlflow_io import MlflowRegistry

    return MlflowRegistry(settings)


# ------------------------------------------------------------------ stage 1: data
def load_base(
    settings: TrainerSettings, dataset: str | None = None
) -> tuple[DatasetSpec, pd.DataFrame, pd.Series, list[ColumnSpec]]:
    spec = load_spec(
        dataset or settings.dataset, data_root=Path(settings.dataset_root) if settings.dataset_root else None
    )
    X, y, columns = load_dataset(spec)
    return spec, X, y, columns


def fetch_labelled(settings: TrainerSettings) -> list[Any] | None:
    """The raw rows of ``GET /predictions?labelled=true`` (every page), unchecked.

    None when INFERENCE_URL is empty or the service does not answer (a warning, not an error:
    retraining on the base data alone is still useful).
    """
    if not settings.inference_url:
        return None
    rows: list[Any] = []
    since_id: int | None = None
    try:
        with ServiceClient(settings.inference_url, timeout=15.0, retries=1, backoff=0.5) as cl:
            while True:
                params: dict[str, Any] = {"labelled": "true", "limit": PAGE_LIMIT}
                if since_id is not None:
                    params["since_id"] = since_id
                page = cl.get("/predictions", params=params)
                items = page.get("items") if isinstance(page, dict) else None
                if not isinstance(items, list):
                    raise UpstreamError(f"GET {settings.inference_url}/predictions answered no list of items")
                rows.extend(items)
                nxt = page.get("next_since_id")
                if not items or nxt is None:
                    break
                if (
                    isinstance(nxt, bool)
                    or not isinstance(nxt, int)
                    or (since_id is not None and nxt <= since_id)
                ):
                    logger.warning("GET /predictions: next_since_id %r does not advance; pull stopped", nxt)
                    break
                since_id = nxt
    except GradeflowError as exc:
        logger.warning("no production data from %s: %s", settings.inference_url, exc.message)
        return None
    return rows


def pull_labelled(
    settings: TrainerSettings, spec: DatasetSpec, columns: list[ColumnSpec]
) -> LabelledRows | None:
    """Labelled production rows from inference, re-checked (``labelled``), oldest first."""
    raw = fetch_labelled(settings)
    if raw is None:
        return None
    rows = clean_labelled(raw, spec, columns, settings.production_max_rows)
    if rows.dropped:
        logger.warning(
            "dropped %d of %d labelled production rows from %s: %s",
            rows.n_dropped,
            len(raw),
            settings.inference_url,
            ", ".join(f"{k} {v}" for k, v in sorted(rows.dropped.items())),
        )
    logger.info("pulled %d labelled production rows from %s", len(rows.X), settings.inference_url)
    return rows


@dataclass(frozen=True)
class TrainingData:
    """What a candidate is trained and judged on."""

    spec: DatasetSpec
    columns: list[ColumnSpec]
    fingerprint: str
    base_rows: int
    X_train: pd.DataFrame  # base training split (+ the older labelled production rows)
    y_train: pd.Series
    weights: np.ndarray | None  # per training row; None = all 1
    X_test: pd.DataFrame  # base holdout
    y_test: pd.Series
    X_recent: pd.DataFrame | None  # the most recent labelled production rows, held out for the gate
    y_recent: pd.Series | None
    X_ref: pd.DataFrame  # reference sample of the export: every row the served model was trained on, once
    y_ref: pd.Series
    rows: dict[str, int]
    dropped: dict[str, int]  # labelled production rows refused, per reason (see ``labelled``)
    mix: TrainingMix | None = None  # how base and production rows are mixed, and why (``mix``)
    base_train_rows: int = 0  # residual mix: X_train holds this many base rows, then production rows
    # REFIT_ON_ALL_ROWS: the training rows + the gate's recent holdout (+ the base holdout with
    # REFIT_ON_BASE_HOLDOUT), mixed by the same rule (None: no refit, e.g. the setting is off or there is
    # no production row to add).
    X_refit: pd.DataFrame | None = None
    y_refit: pd.Series | None = None
    refit_weights: np.ndarray | None = None
    refit_base_rows: int = 0  # residual mix: X_refit holds this many base rows, then production rows
    refit_base_holdout: bool = False  # X_refit holds the base holdout (the gate must not judge there)
    feature_lineage: dict[str, Any] | None = None  # FEATURE_SOURCE=feast: the views and versions used

    def eval_sets(self) -> EvalSets:
        sets: EvalSets = {gate.BASE: (self.X_test, self.y_test)}
        if self.X_recent is not None and self.y_recent is not None:
            sets[gate.RECENT] = (self.X_recent, self.y_recent)
        return sets


def assemble_data(
    settings: TrainerSettings, request: RetrainRequest, dataset: str | None = None
) -> TrainingData:
    """Base dataset + labelled production rows, split into training, holdouts and reference.

    FEATURE_SOURCE=feast: the base rows are the feature store's point-in-time join (``feature_source``).
    """
    lineage: dict[str, Any] | None = None
    if settings.feature_source == "feast":
        from .feature_source import store_training_set

        got = store_training_set(settings, dataset)
        spec, X, y, columns, lineage = got.spec, got.X, got.y, got.columns, got.lineage
    else:
        spec, X, y, columns = load_base(settings, dataset)
    prod = pull_labelled(settings, spec, columns) if request.use_production_data else None
    data = training_data(settings, spec, columns, X, y, prod)
    return replace(data, feature_lineage=lineage) if lineage else data


def training_data(
    settings: TrainerSettings,
    spec: DatasetSpec,
    columns: list[ColumnSpec],
    X: pd.DataFrame,
    y: pd.Series,
    prod: LabelledRows | None,
) -> TrainingData:
    """``assemble_data`` after loading: split the base data, hold out the most recent production rows
    for the gate, and mix the rest with the base rows as ``mix.choose`` decides (or the fixed weight)."""
    full = X.copy()
    full[spec.target] = y.to_numpy()
    Xb_tr, Xb_te, yb_tr, yb_te = split(X, y, test_size=settings.test_size, seed=settings.seed)
    rows = {"train": len(Xb_tr), "test": len(Xb_te), "base": len(X)}
    dropped = prod.dropped if prod is not None else {}
    if prod is not None:
        rows["production_dropped"] = prod.n_dropped
        rows.update({f"production_dropped_{k}": v for k, v in dropped.items()})
    data = TrainingData(
        spec=spec,
        columns=columns,
        fingerprint=fingerprint(full),
        base_rows=len(X),
        X_train=Xb_tr,
        y_train=yb_tr,
        weights=None,
        X_test=Xb_te,
        y_test=yb_te,
        X_recent=None,
        y_recent=None,
        X_ref=Xb_tr,
        y_ref=yb_tr,
        rows=rows,
        dropped=dropped,
    )
    if prod is not None and len(prod.X) < settings.production_min_rows:
        logger.info(
            "only %d labelled production rows (< PRODUCTION_MIN_ROWS=%d): base data only",
            len(prod.X),
            settings.production_min_rows,
        )
        prod = None
    if prod is None:
        return data
    # production rows: the most recent share is held out for the gate, the rest is trained on
    Xp, yp = prod.X, prod.y
    n_hold = max(1, int(round(len(Xp) * settings.production_holdout)))
    Xp_tr, Xp_te = Xp.iloc[:-n_hold].reset_index(drop=True), Xp.iloc[-n_hold:].reset_index(drop=True)
    yp_tr, yp_te = yp.iloc[:-n_hold].reset_index(drop=True), yp.iloc[-n_hold:].reset_index(drop=True)
    w = settings.effective_production_weight(len(Xb_tr), len(Xp_tr))
    if not settings.train_mix:
        choice = mixing.fixed(w, "TRAIN_MIX is off")
    elif len(Xp_tr) < settings.mix_min_rows:
        choice = mixing.fixed(
            w, f"only {len(Xp_tr)} labelled production training rows (< MIX_MIN_ROWS={settings.mix_min_rows})"
        )
    else:
        choice = mixing.choose(
            Xb_tr, yb_tr, Xp_tr, yp_tr, columns, extra_weight=settings.production_weight, seed=settings.seed
        )
    # production rows weigh w each (sample weights, not copies: copies would leak across CV folds)
    X_all = pd.concat([Xb_tr, Xp_tr], ignore_index=True)
    y_all = pd.concat([yb_tr, yp_tr], ignore_index=True)
    kind = choice.mix.kind
    weights: np.ndarray | None = None
    X_train, y_train = X_all, y_all
    if kind == "weighted":
        weights = np.concatenate([np.ones(len(Xb_tr)), np.full(len(Xp_tr), float(choice.mix.weight))])
    elif kind == "production_only":
        X_train, y_train = Xp_tr, yp_tr
    elif kind == "base_only":
        X_train, y_train = Xb_tr, yb_tr
    rows.update(
        production_weight=int(round(choice.report.production_weight)),
        train=len(X_train),
        production=len(Xp),
        production_train=len(Xp_tr),
        production_holdout=len(Xp_te),
    )
    # the refit's base rows: the base training rows, and with REFIT_ON_BASE_HOLDOUT the base holdout too
    with_holdout = settings.refit_on_base_holdout
    Xb_fit = pd.concat([Xb_tr, Xb_te], ignore_index=True) if with_holdout else Xb_tr
    yb_fit = pd.concat([yb_tr, yb_te], ignore_index=True) if with_holdout else yb_tr
    refit = _refit_rows(settings, choice.mix, Xb_fit, yb_fit, Xp, yp)
    X_ref, y_ref = X_all, y_all
    if refit is not None:
        rows["refit"] = len(refit[0])
        # the reference sample of the export: every row the served (refit) model was trained on, once
        X_ref = pd.concat([Xb_fit, Xp], ignore_index=True)
        y_ref = pd.concat([yb_fit, yp], ignore_index=True)
    return TrainingData(
        spec=spec,
        columns=columns,
        fingerprint=data.fingerprint,
        base_rows=len(X),
        X_train=X_train,
        y_train=y_train,
        weights=weights,
        X_test=Xb_te,
        y_test=yb_te,
        X_recent=Xp_te,
        y_recent=yp_te,
        X_ref=X_ref,
        y_ref=y_ref,
        rows=rows,
        dropped=dropped,
        mix=choice.report,
        base_train_rows=len(Xb_tr),
        X_refit=refit[0] if refit else None,
        y_refit=refit[1] if refit else None,
        refit_weights=refit[2] if refit else None,
        refit_base_rows=len(Xb_fit),
        # a production-only refit never sees base rows (its reference above still holds them all)
        refit_base_holdout=refit is not None and with_holdout and kind != "production_only",
    )


def _refit_rows(
    settings: TrainerSettings,
    m: mixing.Mix,
    Xb: pd.DataFrame,
    yb: pd.Series,
    Xp: pd.DataFrame,
    yp: pd.Series,
) -> tuple[pd.DataFrame, pd.Series, np.ndarray | None] | None:
    """The refit's rows (REFIT_ON_ALL_ROWS): the base rows ``Xb`` (training rows, + the base holdout with
    REFIT_ON_BASE_HOLDOUT) and ALL labelled production rows (training + the gate's recent holdout), mixed
    by the chosen mix's rule; the weight of a rule that
    depends on the row counts (``balanced``, the automatic weight) is recomputed for the new counts.
    None when the setting is off or the mix uses no production row (nothing to add)."""
    if not settings.refit_on_all_rows or m.kind == "base_only":
        return None
    if m.kind == "production_only":
        return Xp.reset_index(drop=True), yp.reset_index(drop=True), None
    X = pd.concat([Xb, Xp], ignore_index=True)
    y = pd.concat([yb, yp], ignore_index=True)
    if m.kind == "residual":
        return X, y, None
    w = float(m.weight)
    if m.name == "balanced":
        w = len(Xb) / max(1, len(Xp))
    elif m.name == "auto_weight":
        w = float(settings.effective_production_weight(len(Xb), len(Xp)))
    return X, y, np.concatenate([np.ones(len(Xb)), np.full(len(Xp), w)])


def production_note(data: TrainingData) -> str:
    """One line on the labelled production rows: used, dropped and why."""
    used = data.rows.get("production", 0)
    why = ", ".join(f"{k} {v}" for k, v in sorted(data.dropped.items()))
    note = f"production data: {used} labelled rows used, {sum(data.dropped.values())} dropped"
    return note + (f" ({why})" if why else "")


# ------------------------------------------------------------------ stage 2: fit + evaluate
@dataclass(frozen=True)
class Candidate:
    fitted: FitResult  # fitted on the training rows: what was evaluated (metrics) and what the gate judges
    challenger: dict[str, float]  # <evaluation set>_<metric> of the candidate
    naive: dict[str, float]  # the same for the naive baseline
    metrics: dict[str, float]  # what the run, the export and the result report (of ``fitted``)
    refit: FitResult | None = None  # REFIT_ON_ALL_ROWS: the same procedure on the refit rows

    @property
    def pipeline(self) -> Any:
        """The model registered, exported and served: the refit when there is one."""
        return (self.refit or self.fitted).pipeline

    @property
    def evaluated(self) -> Any:
        """The model the metrics and the gate's per-row predictions are of (fitted before the refit)."""
        return self.fitted.pipeline


def _eval_sets(pipe: Any, sets: EvalSets) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, (X, y) in sets.items():
        for k, v in evaluate(pipe, X, y).items():
            out[f"{name}_{k}"] = v
    return out


def _fit_mix(
    settings: TrainerSettings,
    data: TrainingData,
    X: pd.DataFrame,
    y: pd.Series,
    base_rows: int,
    weights: np.ndarray | None,
    **fit_args: Any,
) -> FitResult:
    """Fit the chosen training mix on ``X``/``y``: the residual mix boosts on from a base fit of the
    first ``base_rows`` rows; every other mix is ``fit`` with per-row ``weights`` (``fit_args``: search,
    budget, candidates, progress)."""
    if data.mix is not None and data.mix.kind == "residual":
        return mixing.fit_residual(X, y, base_rows, data.columns, seed=settings.seed)
    return fit(X, y, data.columns, seed=settings.seed, sample_weight=weights, **fit_args)


def fit_candidate(settings: TrainerSettings, data: TrainingData, report: Progress = no_progress) -> Candidate:
    """Fit (with the model search when TRAIN_SEARCH) and evaluate on every evaluation set."""
    report("fit", 0.1)
    fitted = _fit_mix(
        settings,
        data,
        data.X_train,
        data.y_train,
        data.base_train_rows,
        data.weights,
        search=settings.train_search,
        budget_seconds=settings.train_search_budget_seconds,
        progress=lambda stage, f: report(stage, 0.1 + 0.5 * f),
    )
    report("evaluate", 0.62)
    sets = data.eval_sets()
    challenger = _eval_sets(fitted.pipeline, sets)
    naive = {
        f"{name}_{k}": v for name, (_, ys) in sets.items() for k, v in naive_metrics(data.y_train, ys).items()
    }
    keys = ("mae", "rmse", "r2")
    metrics = {
        **{k: challenger[f"{gate.BASE}_{k}"] for k in keys},
        **{f"naive_{k}": naive[f"{gate.BASE}_{k}"] for k in keys},
        **{k: v for k, v in challenger.items() if k.startswith(gate.RECENT)},
    }
    logger.info("challenger metrics %s", {k: round(v, 4) for k, v in metrics.items()})
    refit = _refit(settings, data, fitted, report)
    return Candidate(fitted=fitted, challenger=challenger, naive=naive, metrics=metrics, refit=refit)


def _refit(
    settings: TrainerSettings, data: TrainingData, fitted: FitResult, report: Progress = no_progress
) -> FitResult | None:
    """Validate, then refit: the chosen mix, family and hyper-parameters (no new search) on the
    training rows + the gate's recent holdout (``TrainingData.X_refit``)."""
    if not settings.refit_on_all_rows or data.X_refit is None or data.y_refit is None:
        return None
    report("refit on all rows", 0.64)
    out = _fit_mix(
        settings,
        data,
        data.X_refit,
        data.y_refit,
        data.refit_base_rows,
        data.refit_weights,
        search=False,
        candidates=[(fitted.family, dict(fitted.params))],
    )
    logger.info(
        "refit %s on %d rows (evaluated fit: %d rows) in %.1fs",
        out.family,
        len(data.X_refit),
        len(data.X_train),
        out.seconds,
    )
    return out


# ------------------------------------------------------------------ stage 3: log + register
def _with_target(X: pd.DataFrame, y: pd.Series, target: str) -> pd.DataFrame:
    out = X.copy()
    out[target] = y.to_numpy()
    return out


def write_export_artifacts(
    settings: TrainerSettings, data: TrainingData, metrics: dict[str, float], folder: Path
) -> Path:
    """What a later export of this version needs without the dataset (manual promote/rollback)."""
    folder.mkdir(parents=True, exist_ok=True)
    ref = _with_target(data.X_ref, data.y_ref, data.spec.target)
    ref.sample(n=min(len(ref), settings.reference_rows), random_state=settings.seed).to_csv(
        folder / "reference.csv", index=False
    )
    (folder / "columns.json").write_text(json.dumps([c.model_dump() for c in data.columns]))
    meta = {
        "target": data.spec.target,
        "target_min": data.spec.target_min,
        "target_max": data.spec.target_max,
        "dataset": data.spec.name,
        "fingerprint": data.fingerprint,
        "metrics": metrics,
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    if data.feature_lineage:
        (folder / "feature_views.json").write_text(json.dumps(data.feature_lineage, indent=1))
    return folder


def run_record(
    settings: TrainerSettings,
    data: TrainingData,
    cand: Candidate,
    request: RetrainRequest,
    artifacts_dir: Path,
) -> RunRecord:
    """The run of a candidate: tags, params, metrics, inputs, plots' data, artifacts, model."""
    spec, fitted = data.spec, cand.fitted
    refit_params: dict[str, Any] = {"refit": cand.refit is not None}
    refit_tags: dict[str, str] = {}
    if cand.refit is not None and data.X_refit is not None:
        refit_params["rows_refit"] = len(data.X_refit)
        refit_params["refit_base_holdout"] = data.refit_base_holdout
        added = "the recent labelled holdout" + (" and the base holdout" if data.refit_base_holdout else "")
        refit_tags["gradeflow.refit"] = (
            f"the registered model is a refit on {len(data.X_refit)} rows (training rows + {added}; same mix, "
            f"family and hyper-parameters); the holdout metrics are those of the fit on the "
            f"{len(data.X_train)} training rows, before the refit"
        )
    mix_params, mix_metrics, mix_tags = mixing.as_params(data.mix) if data.mix else ({}, {}, {})
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    inputs = [
        LoggedInput(
            _with_target(data.X_train, data.y_train, spec.target), f"{spec.name}-train", "training", spec.path
        ),
        LoggedInput(
            _with_target(data.X_test, data.y_test, spec.target),
            f"{spec.name}-holdout",
            "evaluation",
            spec.path,
        ),
    ]
    if data.X_recent is not None and data.y_recent is not None:
        inputs.append(
            LoggedInput(
                _with_target(data.X_recent, data.y_recent, spec.target), "recent-labelled", "evaluation"
            )
        )
    return RunRecord(
        run_name=f"{spec.name}-{stamp}",
        target=spec.target,
        pipeline=cand.pipeline,
        tags={
            "gradeflow.reason": request.reason[:500],
            "gradeflow.dataset": spec.name,
            "gradeflow.dataset_fingerprint": data.fingerprint,
            "gradeflow.monitor_run_id": request.monitor_run_id or "",
            **({JOB_TAG: job_id} if (job_id := current_job_id()) else {}),
            **mix_tags,
            **refit_tags,
            **(
                {
                    "gradeflow.feature_views": json.dumps(
                        {n: v["version"] for n, v in data.feature_lineage["views"].items()}
                    )
                }
                if data.feature_lineage
                else {}
            ),
        },
        params={
            "dataset": spec.name,
            "dataset_path": spec.path or "synthetic",
            "target": spec.target,
            "rows_base": data.base_rows,
            "rows_train": len(data.X_train),
            "rows_test": len(data.X_test),
            "rows_production": data.rows.get("production", 0),
            "production_weight": data.rows.get("production_weight", 0),
            **{f"production_dropped_{k}": data.dropped.get(k, 0) for k in REASONS},
            "test_size": settings.test_size,
            "seed": settings.seed,
            "search": settings.train_search,
            "search_budget_seconds": settings.train_search_budget_seconds,
            "search_candidates": fitted.candidates,
            "search_candidates_tried": fitted.tried,
            "search_budget_stopped": fitted.budget_stopped,
            "family": fitted.family,
            **{f"model.{k}": v for k, v in fitted.params.items()},
            **mix_params,
            **refit_params,
            **lineage_params(data.feature_lineage),
        },
        metrics={
            **cand.metrics,
            "fit_seconds": fitted.seconds,
            "search_seconds": fitted.search_seconds,
            "production_rows_dropped": float(sum(data.dropped.values())),
            **({"refit_seconds": cand.refit.seconds} if cand.refit is not None else {}),
            **mix_metrics,
        },
        cv_rmse=fitted.cv_rmse,
        inputs=inputs,
        y_holdout=np.asarray(data.y_test, dtype=float),
        pred_holdout=np.asarray(cand.evaluated.predict(data.X_test), dtype=float),
        artifacts_dir=artifacts_dir,
        input_example=data.X_train.head(50),
    )


def register_candidate(
    settings: TrainerSettings,
    registry: Registry,
    data: TrainingData,
    cand: Candidate,
    request: RetrainRequest,
) -> Registered:
    """Log the candidate's run and register its model as a new version."""
    with tempfile.TemporaryDirectory(prefix="gradeflow-train-") as tmpd:
        artifacts = write_export_artifacts(settings, data, cand.metrics, Path(tmpd) / "export")
        registered = registry.log_candidate(run_record(settings, data, cand, request, artifacts))
    # right after registration: which base holdout this version saw, for every later gate (``judge``)
    registry.set_version_tags(
        registered.version, {gate.BASE_HOLDOUT_TAG: base_holdout_record(settings, data, cand).to_json()}
    )
    logger.info("registered %s v%d (run %s)", registry.model_name, registered.version, registered.run_id)
    return registered


def base_holdout_record(
    settings: TrainerSettings, data: TrainingData, cand: Candidate | None = None
) -> gate.BaseHoldout:
    """This training's base holdout (which rows), whether the served model was trained on it
    (REFIT_ON_BASE_HOLDOUT) and the candidate's error there before any refit."""
    return gate.BaseHoldout(
        fingerprint=data.fingerprint,
        test_size=settings.test_size,
        seed=settings.seed,
        rows=len(data.X_test),
        trained_on=cand is not None and cand.refit is not None and data.refit_base_holdout,
        metrics={k: cand.challenger[f"{gate.BASE}_{k}"] for k in ("rmse", "mae", "r2")} if cand else {},
    )


# ------------------------------------------------------------------ stage 4: gate + publish
def _champion_pipeline(settings: TrainerSettings, registry: Registry, version: int, tmp: Path) -> Any:
    """The champion's fitted pipeline: from its kept export (same run, sha256-checked), else from the
    registry."""
    export_dir = kept_export(settings.models_path, version, registry.version(version).run_id)
    if export_dir is not None:
        try:
            return load_export(export_dir)[1]
        except ExportError as exc:
            logger.warning("kept export of v%d unusable (%s); loading it from MLflow", version, exc.message)
    return registry.load_model(version, tmp)


def judge(
    settings: TrainerSettings, registry: Registry, version: int, cand: Candidate, data: TrainingData
) -> GateDecision:
    """The gate's verdict on ``version`` against the current champion, on the same data (and, on the
    recent labelled rows, row by row: both models' predictions go to the gate). A champion refitted on
    the base holdout is not evaluated there (``gate.champion_base``)."""
    sets = data.eval_sets()
    champ = registry.champion_version()
    champ_metrics: dict[str, float] | None = None
    paired: gate.Paired | None = None
    note = ""
    if champ is not None:
        try:
            with tempfile.TemporaryDirectory(prefix="gradeflow-champion-") as tmpd:
                champ_pipe = _champion_pipeline(settings, registry, champ, Path(tmpd))
                champ_metrics, paired = champion_evidence(cand, sets, champ_pipe)
            record = gate.BaseHoldout.from_json(registry.version(champ).tags.get(gate.BASE_HOLDOUT_TAG))
            champ_metrics, note = gate.champion_base(
                champ_metrics, record, base_holdout_record(settings, data), champ
            )
        except UpstreamError:
            raise  # the registry failing is the job's (first) error, not a verdict on the champion
        except (GradeflowError, ValueError, KeyError) as exc:
            msg = exc.message if isinstance(exc, GradeflowError) else f"{exc.__class__.__name__}: {exc}"
            logger.error("champion v%d cannot be evaluated on this data: %s", champ, msg)
            return GateDecision(
                promoted=False,
                challenger_version=version,
                champion_version=champ,
                margin=settings.promotion_min_improvement,
                reason=f"champion v{champ} could not be evaluated on the challenger's data ({msg[:300]}); "
                "promote manually if intended",
                challenger=cand.challenger,
                evaluated_on=list(sets),
            )
    return verdict(settings, version, cand, champ, champ_metrics, paired, note)


def champion_evidence(
    cand: Candidate, sets: EvalSets, champ_pipe: Any
) -> tuple[dict[str, float], gate.Paired | None]:
    """The champion's metrics on the challenger's evaluation sets and, on the recent labelled rows,
    both models' per-row predictions (the challenger's: the evaluated fit, before any refit)."""
    champ_metrics = _eval_sets(champ_pipe, sets)
    paired: gate.Paired | None = None
    if gate.RECENT in sets:
        X_recent, y_recent = sets[gate.RECENT]
        paired = gate.Paired(
            y=np.asarray(y_recent, dtype=float),
            challenger=np.asarray(cand.evaluated.predict(X_recent), dtype=float),
            champion=np.asarray(champ_pipe.predict(X_recent), dtype=float),
        )
    return champ_metrics, paired


def verdict(
    settings: TrainerSettings,
    version: int,
    cand: Candidate,
    champ: int | None,
    champ_metrics: dict[str, float] | None,
    paired: gate.Paired | None,
    note: str = "",
) -> GateDecision:
    """``gate.decide`` with the trainer's settings (``judge`` without the registry); ``note`` (how the
    champion's base-holdout error was obtained) ends the reason."""
    decision = gate.decide(
        cand.challenger,
        champ_metrics,
        cand.naive,
        margin=settings.promotion_min_improvement,
        base_tolerance=settings.gate_base_tolerance,
        drift_ratio=settings.gate_drift_ratio,
        challenger_version=version,
        champion_version=champ,
        paired=paired,
        min_rows=settings.gate_min_rows,
        confidence=settings.gate_confidence,
        seed=settings.seed,
        label_share=settings.production_holdout,
    )
    return decision.model_copy(update={"reason": f"{decision.reason}; {note}"}) if note else decision


@dataclass(frozen=True)
class Published:
    decision: GateDecision
    export_dir: Path | None


def _evidence_tags(decision: GateDecision) -> dict[str, str]:
    """The gate's evidence as flat, readable tags (the whole decision is in ``gate.decision``)."""
    tags: dict[str, str] = {}
    if decision.method:
        tags["gate.method"] = decision.method
    if decision.rows is not None:
        tags["gate.rows"] = str(decision.rows)
    if decision.effect is not None:
        tags["gate.effect"] = f"{decision.effect:.6g}"
    if decision.effect_low is not None and decision.effect_high is not None:
        tags["gate.effect_interval"] = (
            f"[{decision.effect_low:.6g}, {decision.effect_high:.6g}] at {decision.confidence or 0:.0%}"
        )
    if decision.effect_relative is not None:
        tags["gate.effect_relative"] = f"{decision.effect_relative:.6g}"
    if decision.labels_needed is not None:
        tags["gate.labels_needed"] = str(decision.labels_needed)
    if decision.errors:
        tags["gate.errors"] = json.dumps(decision.errors, sort_keys=True)
    return tags


def _decision_tags(decision: GateDecision, data: TrainingData, request: RetrainRequest) -> dict[str, str]:
    return {
        "gate.promoted": str(decision.promoted).lower(),
        "gate.reason": decision.reason,
        "gate.decision": decision.model_dump_json(),
        **_evidence_tags(decision),
        "gradeflow.dataset": data.spec.name,
        "gradeflow.dataset_fingerprint": data.fingerprint,
        "gradeflow.reason": request.reason,
    }


def baseline_of(decision: GateDecision, cand: Candidate, data: TrainingData) -> mf.PerformanceBaseline | None:
    """The monitor's baseline for a promoted candidate: its error on the set the gate decided on (the
    recent labelled holdout when it was evaluated), with that set's size and the time."""
    deciding = decision.evaluated_on[-1] if decision.evaluated_on else None
    if deciding == gate.RECENT and data.X_recent is not None:
        rows: int | None = len(data.X_recent)
    else:
        deciding, rows = gate.BASE, len(data.X_test)
    return mf.performance_baseline(cand.metrics, deciding, rows=rows, measured_at=datetime.now(UTC))


def decide_and_publish(
    settings: TrainerSettings,
    registry: Registry,
    data: TrainingData,
    cand: Candidate,
    registered: Registered,
    request: RetrainRequest,
    report: Progress = no_progress,
) -> Published:
    """Gate -> decision tags on the version (when approved: inside the champion change,
    ``promotion.publish``, after its intent) -> the decision on the run. A failed export turns the
    decision into "not promoted" (tags rewritten)."""
    version = registered.version
    pr.wait_reconciled(settings)
    with CHAMPION_LOCK:
        decision = judge(settings, registry, version, cand, data)
        export_dir: Path | None = None
        if not decision.promoted:
            registry.set_version_tags(version, _decision_tags(decision, data, request))
            pr.fault(settings, "train", "decided")
        else:
            report("export", 0.9)
            intent = pr.Intent(
                op="train",
                action="gate",
                model_name=registry.model_name,
                from_version=decision.champion_version,
                to_version=version,
                to_run_id=registered.run_id,
                job_id=current_job_id(),
                reason=decision.reason,
            )

            baseline = baseline_of(decision, cand, data)
            recent_ref = (
                _with_target(data.X_recent, data.y_recent, data.spec.target)
                if baseline is not None
                and baseline.evaluation_set == gate.RECENT
                and data.X_recent is not None
                and data.y_recent is not None
                else None
            )

            def stage() -> Path:
                return export_model(
                    settings.models_path,
                    cand.pipeline,
                    data.columns,
                    data.X_ref,
                    data.y_ref,
                    target=data.spec.target,
                    model_name=registry.model_name,
                    version=version,
                    run_id=registered.run_id,
                    metrics=cand.metrics,
                    dataset=data.spec.name,
                    fingerprint=data.fingerprint,
                    reason=request.reason,
                    reference_rows=settings.reference_rows,
                    keep=settings.export_keep,
                    target_min=data.spec.target_min,
                    target_max=data.spec.target_max,
                    model_uri=registered.model_uri,
                    swap_current=False,
                    performance_baseline=baseline,
                    recent_reference=recent_ref,
                )

            def decide() -> None:
                registry.set_version_tags(version, _decision_tags(decision, data, request))

            try:
                if settings.rollout != "direct" and decision.champion_version is not None:
                    # progressive delivery: the challenger goes next to the champion, the monitor decides
                    _, export_dir = rollout.start(
                        settings,
                        registry,
                        version=version,
                        run_id=registered.run_id,
                        reason=decision.reason,
                        stage_export=stage,
                        decide=decide,
                    )
                else:

                    def stage_then_end_rollout() -> Path:
                        # ROLLOUT=direct now, a rollout still in progress (started before a restart with
                        # another ROLLOUT): it ends once the new champion's export is staged
                        staged = stage()
                        if rollout.active(settings) is not None:
                            rollout.end(
                                settings,
                                registry,
                                "aborted",
                                f"superseded by v{version}, approved by the gate and promoted directly "
                                f"(ROLLOUT={settings.rollout})",
                            )
                        return staged

                    _, export_dir = pr.publish(
                        settings, registry, intent, stage_then_end_rollout, decide=decide
                    )
            except ExportError as exc:
                decision = decision.model_copy(
                    update={
                        "promoted": False,
                        "reason": decision.reason + f"; NOT promoted: export failed: {exc.message}",
                    }
                )
                logger.error("export of v%d failed: %s", version, exc.message)
                registry.set_version_tags(version, _decision_tags(decision, data, request))
        registry.record_run_decision(registered.run_id, decision)
    logger.info(
        "gate: v%d %s: %s", version, "PROMOTED" if decision.promoted else "not promoted", decision.reason
    )
    return Published(decision=decision, export_dir=export_dir)


# ------------------------------------------------------------------ training
def train_once(
    settings: TrainerSettings,
    request: RetrainRequest | None = None,
    progress: Progress | None = None,
    dataset: str | None = None,
    registry: Registry | None = None,
) -> TrainResult:
    """Train, log, register and gate one challenger (see the module docstring)."""
    request = request or RetrainRequest()
    report = progress or no_progress
    report("load data", 0.02)
    data = assemble_data(settings, request, dataset)
    if "production_dropped" in data.rows:
        report(production_note(data), 0.05)
    if data.mix is not None:
        report(f"training mix: {data.mix.chosen}", 0.06)
    cand = fit_candidate(settings, data, report)
    report("log to MLflow", 0.68)
    registry = registry or mlflow_registry(settings)
    registered = register_candidate(settings, registry, data, cand, request)
    report("approval gate", 0.85)
    published = decide_and_publish(settings, registry, data, cand, registered, request, report)
    report("done", 1.0)
    return TrainResult(
        run_id=registered.run_id,
        version=registered.version,
        model_name=registry.model_name,
        metrics=cand.metrics,
        decision=published.decision,
        exported=published.export_dir is not None,
        export_dir=str(published.export_dir) if published.export_dir else None,
        rows=data.rows,
        mix=data.mix,
    )


# ------------------------------------------------------------------ promote / rollback
def promote(
    settings: TrainerSettings,
    version: int,
    reason: str = "manual promotion",
    action: str = "promote",
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Make ``version`` the champion (``promotion.publish``: intent, export, alias, event, current,
    marker).

    A rollout in progress is ended first, under the same lock: a manual promotion of its candidate
    finishes it as promoted (``rollout.promote``); any other promotion or a rollback aborts it (reason
    ``superseded by manual promote of vN`` / ``aborted by manual rollback to vN``, candidate withdrawn)
    once the target's export is staged, so a version that cannot be exported ends nothing."""
    registry = registry or mlflow_registry(settings)
    pr.wait_reconciled(settings)
    with CHAMPION_LOCK:
        mv = registry.version(version)  # NotFound -> 404
        previous = registry.champion_version()
        ongoing = rollout.active(settings)
        if ongoing is not None and action != "rollback" and version == ongoing.candidate_version:
            finished = rollout.promote(settings, registry, f"manual promote of v{version}: {reason}")
            return _promotion_result(settings, registry, previous, version, action, finished)
        staged = pr.stage_export(settings, registry, mv, reason)  # before anything changes
        ended = None
        if ongoing is not None:
            why = (
                f"aborted by manual rollback to v{version}"
                if action == "rollback"
                else f"superseded by manual promote of v{version}"
            )
            ended = rollout.end(settings, registry, "aborted", f"{why}: {reason}")
        intent = pr.Intent(
            op="rollback" if action == "rollback" else "promote",
            action="rollback" if action == "rollback" else "promote",
            model_name=registry.model_name,
            from_version=previous,
            to_version=version,
            to_run_id=mv.run_id,
            reason=reason,
        )
        event, export_dir = pr.publish(settings, registry, intent, lambda: staged)
    logger.info("%s: %s v%s -> v%d (%s)", action, registry.model_name, previous, version, reason)
    return {
        "model_name": registry.model_name,
        "version": version,
        "previous_version": previous,
        "action": action,
        "export_dir": str(export_dir),
        "event": event.model_dump(mode="json"),
        "rollout": ended.model_dump(mode="json") if ended is not None else None,
    }


def _promotion_result(
    settings: TrainerSettings,
    registry: Registry,
    previous: int | None,
    version: int,
    action: str,
    ended: Any,
) -> dict[str, Any]:
    """The answer of a manual promotion that finished a rollout (its event is the rollout's promotion)."""
    event = [e for e in registry.promotion_events() if e.version == version][-1]
    current = mf.read_current(settings.models_path)
    logger.info(
        "%s: %s v%s -> v%d (finished rollout %s)",
        action,
        registry.model_name,
        previous,
        version,
        ended.rollout_id,
    )
    return {
        "model_name": registry.model_name,
        "version": version,
        "previous_version": previous,
        "action": action,
        "export_dir": str(current[0]) if current is not None else "",
        "event": event.model_dump(mode="json"),
        "rollout": ended.model_dump(mode="json"),
    }


def rollback(
    settings: TrainerSettings, reason: str = "manual rollback", registry: Registry | None = None
) -> dict[str, Any]:
    """Return to the previous champion in the promotion history (Conflict when there is none)."""
    registry = registry or mlflow_registry(settings)
    with CHAMPION_LOCK:
        events = registry.promotion_events()
        target = hist.rollback_target(events)
        if target is None:
            raise Conflict(
                "no previous champion to roll back to", details={"champions": hist.champion_stack(events)}
            )
        return promote(settings, target, reason=reason, action="rollback", registry=registry)


def champion_info(settings: TrainerSettings, registry: Registry | None = None) -> dict[str, Any]:
    """The current champion (registry alias) and the export inference serves."""
    registry = registry or mlflow_registry(settings)
    version = registry.champion_version()
    info: dict[str, Any] = {
        "model_name": registry.model_name,
        "alias": ALIAS,
        "version": version,
        "run_id": None,
        "mlflow_run_url": None,
        "export": None,
    }
    if version is not None:
        mv = registry.version(version)
        info["run_id"] = mv.run_id
        info["tags"] = {k: v for k, v in mv.tags.items() if k != "gate.decision"}
        info["mlflow_run_url"] = registry.run_url(mv.run_id)
    current = mf.read_current(settings.models_path)
    if current is not None:
        export_dir, m = current
        info["export"] = {"dir": str(export_dir), **mf.manifest_summary(m), "created_at": m.created_at}
    return info
