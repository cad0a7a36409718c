"""The trainer's flows as plain functions: train once, promote, roll back, describe the champion.

``train_once``: load + validate the dataset -> (pull labelled production rows) -> split ->
fit -> evaluate (MAE, RMSE, R2, naive baseline) -> log run, inputs, plots and model to the
MLflow server -> registered version -> approval gate (``gate.decide``) against the champion
evaluated on the SAME data -> record the decision (version tags, run tags, promotion
history) -> on promotion export the model to MODEL_DIR and move the ``champion`` alias.

One lock serialises every change of the champion (gate, promote, rollback), so a manual
promotion cannot interleave with the end of a training job.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradeflow_shared import manifest as mf
from gradeflow_shared.contracts import (
    GateDecision,
    PredictionPage,
    PromotionEvent,
    RetrainRequest,
    TrainResult,
)
from gradeflow_shared.datasets import ColumnSpec, DatasetSpec, fingerprint, load_dataset, load_spec
from gradeflow_shared.errors import Conflict, ExportError, GradeflowError
from gradeflow_shared.http import ServiceClient

from . import gate
from . import mlflow_io as mio
from .config import TrainerSettings
from .export import export_model, load_export
from .history import History, champion_stack, from_compact, make_event, rollback_target, to_compact
from .jobs import Progress
from .pipeline import evaluate, fit, naive_metrics, prepare_frame, split

logger = logging.getLogger(__name__)

CHAMPION_LOCK = threading.RLock()
HISTORY_TAG = "gradeflow.champion_history"
EVENTS_TAG = "gradeflow.promotions"
PAGE_LIMIT = 1000


def _noop(stage: str, fraction: float) -> None:
    return None


# ------------------------------------------------------------------ data
def load_base(
    settings: TrainerSettings, dataset: str | None = None
) -> tuple[DatasetSpec, pd.DataFrame, pd.Series, list[ColumnSpec]]:
    spec = load_spec(
        dataset or settings.dataset, data_root=Path(settings.dataset_root) if settings.dataset_root else None
    )
    X, y, columns = load_dataset(spec)
    return spec, X, y, columns


def pull_labelled(
    settings: TrainerSettings, columns: list[ColumnSpec]
) -> tuple[pd.DataFrame, pd.Series] | None:
    """Labelled production rows from inference (``GET /predictions?labelled=true``), oldest first.

    None when INFERENCE_URL is empty or the service does not answer (a warning, not an error:
    retraining on the base data alone is still useful).
    """
    if not settings.inference_url:
        return None
    items: list[dict[str, Any]] = []
    since_id: int | None = None
    try:
        with ServiceClient(settings.inference_url, timeout=15.0, retries=1, backoff=0.5) as cl:
            while True:
                params: dict[str, Any] = {"labelled": "true", "limit": PAGE_LIMIT}
                if since_id is not None:
                    params["since_id"] = since_id
                page = PredictionPage.model_validate(cl.get("/predictions", params=params))
                for it in page.items:
                    if it.actual is not None:
                        items.append({**it.features, "__actual": it.actual, "__id": it.id})
                if not page.items or page.next_since_id is None:
                    break
                since_id = page.next_since_id
    except GradeflowError as exc:
        logger.warning("no production data from %s: %s", settings.inference_url, exc.message)
        return None
    if not items:
        return None
    df = pd.DataFrame(items).sort_values("__id").tail(settings.production_max_rows).reset_index(drop=True)
    y = pd.Series(df["__actual"].astype(float).to_numpy())
    X = prepare_frame(df, columns).reset_index(drop=True)
    logger.info("pulled %d labelled production rows from %s", len(X), settings.inference_url)
    return X, y


# ------------------------------------------------------------------ plots
def _log_plots(y_true: pd.Series, y_pred: np.ndarray, prefix: str = "base_holdout") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    yt = np.asarray(y_true, dtype=float)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(yt, y_pred, s=6, alpha=0.5)
    lo, hi = float(min(yt.min(), y_pred.min())), float(max(yt.max(), y_pred.max()))
    ax.plot([lo, hi], [lo, hi], "r--", lw=1)
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title(f"Predicted vs actual ({prefix})")
    mlflow.log_figure(fig, f"plots/{prefix}_predicted_vs_actual.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    resid = yt - y_pred
    ax.scatter(y_pred, resid, s=6, alpha=0.5)
    ax.axhline(0, color="r", lw=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual - predicted")
    ax.set_title(f"Residuals ({prefix})")
    mlflow.log_figure(fig, f"plots/{prefix}_residuals.png")
    plt.close(fig)


# ------------------------------------------------------------------ champion
def _champion_pipeline(settings: TrainerSettings, cl: Any, version: int, tmp: Path) -> Any:
    """The champion's fitted pipeline: from its kept export (sha256-checked), else from MLflow."""
    export_dir = mf.find_export(settings.models_path, version)
    if export_dir is not None:
        try:
            return load_export(export_dir)[1]
        except ExportError as exc:
            logger.warning("kept export of v%d unusable (%s); loading it from MLflow", version, exc.message)
    return mio.load_version_model(cl, settings.model_name, version, tmp)


def _eval_sets(pipe: Any, sets: dict[str, tuple[pd.DataFrame, pd.Series]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, (X, y) in sets.items():
        for k, v in evaluate(pipe, X, y).items():
            out[f"{name}_{k}"] = v
    return out


# ------------------------------------------------------------------ history
def history(settings: TrainerSettings, cl: Any | None = None) -> History:
    """The local history; recovered from the registered-model tag when the file is missing."""
    h = History(settings.service_dir("trainer"))
    if not h.path.exists() and cl is not None:
        try:
            tag = mio.get_model_tags(cl, settings.model_name).get(HISTORY_TAG)
        except GradeflowError:
            tag = None
        if tag:
            recovered = from_compact(settings.model_name, tag)
            if recovered:
                logger.warning(
                    "promotion history file missing: recovered %d events from MLflow", len(recovered)
                )
                h.seed(recovered)
    return h


def _record(settings: TrainerSettings, cl: Any, event: PromotionEvent) -> None:
    h = history(settings, cl)
    h.append(event)
    mio.append_json_tag(
        cl, settings.model_name, event.version, EVENTS_TAG, json.loads(event.model_dump_json())
    )
    mio.set_model_tag(cl, settings.model_name, HISTORY_TAG, to_compact(h.events(settings.model_name)))


# ------------------------------------------------------------------ training
def train_once(
    settings: TrainerSettings,
    request: RetrainRequest | None = None,
    progress: Progress | None = None,
    dataset: str | None = None,
) -> TrainResult:
    """Train, log, register and gate one challenger (see the module docstring)."""
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.models import infer_signature

    request = request or RetrainRequest()
    report = progress or _noop
    report("load data", 0.02)
    spec, X, y, columns = load_base(settings, dataset)
    full = X.copy()
    full[spec.target] = y.to_numpy()
    fp = fingerprint(full)
    Xb_tr, Xb_te, yb_tr, yb_te = split(X, y, test_size=settings.test_size, seed=settings.seed)

    # production rows: the most recent share is held out for the gate, the rest is trained on
    prod = pull_labelled(settings, columns) if request.use_production_data else None
    Xp_tr = Xp_te = None
    yp_tr = yp_te = None
    if prod is not None and len(prod[0]) < settings.production_min_rows:
        logger.info(
            "only %d labelled production rows (< PRODUCTION_MIN_ROWS=%d): base data only",
            len(prod[0]),
            settings.production_min_rows,
        )
        prod = None
    if prod is not None:
        Xp, yp = prod
        n_hold = max(1, int(round(len(Xp) * settings.production_holdout)))
        Xp_tr, Xp_te = Xp.iloc[:-n_hold].reset_index(drop=True), Xp.iloc[-n_hold:].reset_index(drop=True)
        yp_tr, yp_te = yp.iloc[:-n_hold].reset_index(drop=True), yp.iloc[-n_hold:].reset_index(drop=True)
    X_train, y_train = Xb_tr, yb_tr
    X_ref, y_ref = Xb_tr, yb_tr  # reference sample of the export: every training row once
    rows = {"train": len(X_train), "test": len(Xb_te), "base": len(X)}
    weights: np.ndarray | None = None
    if Xp_tr is not None and yp_tr is not None and Xp_te is not None:
        w = settings.effective_production_weight(len(Xb_tr), len(Xp_tr))
        rows["production_weight"] = w
        # production rows weigh w each (sample weights, not copies: copies would leak across CV folds)
        X_train = pd.concat([Xb_tr, Xp_tr], ignore_index=True)
        y_train = pd.concat([yb_tr, yp_tr], ignore_index=True)
        weights = np.concatenate([np.ones(len(Xb_tr)), np.full(len(Xp_tr), float(w))])
        X_ref = pd.concat([Xb_tr, Xp_tr], ignore_index=True)
        y_ref = pd.concat([yb_tr, yp_tr], ignore_index=True)
        rows.update(
            train=len(X_train),
            production=len(Xp_tr) + len(Xp_te),
            production_train=len(Xp_tr),
            production_holdout=len(Xp_te),
        )

    report("fit", 0.1)
    fitted = fit(
        X_train,
        y_train,
        columns,
        seed=settings.seed,
        search=settings.train_search,
        progress=lambda stage, f: report(stage, 0.1 + 0.5 * f),
        sample_weight=weights,
    )
    pipe = fitted.pipeline

    report("evaluate", 0.62)
    sets: dict[str, tuple[pd.DataFrame, pd.Series]] = {gate.BASE: (Xb_te, yb_te)}
    if Xp_te is not None and yp_te is not None:
        sets[gate.RECENT] = (Xp_te, yp_te)
    challenger = _eval_sets(pipe, sets)
    naive = {
        f"{name}_{k}": v for name, (_, ys) in sets.items() for k, v in naive_metrics(y_train, ys).items()
    }
    base_metrics = {k: challenger[f"{gate.BASE}_{k}"] for k in ("mae", "rmse", "r2")}
    metrics = {**base_metrics, **{f"naive_{k}": naive[f"{gate.BASE}_{k}"] for k in ("mae", "rmse", "r2")}}
    for k, v in challenger.items():
        if k.startswith(gate.RECENT):
            metrics[k] = v
    logger.info("challenger metrics %s", {k: round(v, 4) for k, v in metrics.items()})

    report("log to MLflow", 0.68)
    mio.configure(settings)
    cl = mio.client(settings)
    mlflow.set_experiment(settings.experiment_name)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    with (
        tempfile.TemporaryDirectory(prefix="gradeflow-train-") as tmpd,
        mlflow.start_run(run_name=f"{spec.name}-{stamp}") as run,
    ):
        tmp = Path(tmpd)
        run_id = run.info.run_id
        mlflow.set_tags(
            {
                "gradeflow.reason": request.reason[:500],
                "gradeflow.dataset": spec.name,
                "gradeflow.dataset_fingerprint": fp,
                "gradeflow.monitor_run_id": request.monitor_run_id or "",
            }
        )
        mlflow.log_params(
            {
                "dataset": spec.name,
                "dataset_path": spec.path or "synthetic",
                "target": spec.target,
                "rows_base": len(X),
                "rows_train": len(X_train),
                "rows_test": len(Xb_te),
                "rows_production": len(prod[0]) if prod is not None else 0,
                "production_weight": rows.get("production_weight", 0),
                "test_size": settings.test_size,
                "seed": settings.seed,
                "search": settings.train_search,
                "family": fitted.family,
                **{f"model.{k}": v for k, v in fitted.params.items()},
            }
        )
        mlflow.log_metrics({**metrics, "fit_seconds": fitted.seconds})
        if fitted.cv_rmse:
            mlflow.log_metric("cv_rmse_best", min(fitted.cv_rmse.values()))
            mlflow.log_dict(fitted.cv_rmse, "search/cv_rmse.json")
        train_df = X_train.copy()
        train_df[spec.target] = y_train.to_numpy()
        test_df = Xb_te.copy()
        test_df[spec.target] = yb_te.to_numpy()
        src: dict[str, Any] = {"source": spec.path} if spec.path else {}
        mlflow.log_input(
            from_pandas(train_df, **src, targets=spec.target, name=f"{spec.name}-train"),
            context="training",
        )
        mlflow.log_input(
            from_pandas(test_df, **src, targets=spec.target, name=f"{spec.name}-holdout"),
            context="evaluation",
        )
        if Xp_te is not None and yp_te is not None:
            rec = Xp_te.copy()
            rec[spec.target] = yp_te.to_numpy()
            mlflow.log_input(
                from_pandas(rec, targets=spec.target, name="recent-labelled"), context="evaluation"
            )
        _log_plots(yb_te, np.asarray(pipe.predict(Xb_te), dtype=float))
        # what a later export of this version needs without the dataset (manual promote/rollback)
        ref = X_ref.copy()
        ref[spec.target] = y_ref.to_numpy()
        ref.sample(n=min(len(ref), settings.reference_rows), random_state=settings.seed).to_csv(
            tmp / "reference.csv", index=False
        )
        (tmp / "columns.json").write_text(json.dumps([c.model_dump() for c in columns]))
        (tmp / "meta.json").write_text(
            json.dumps(
                {
                    "target": spec.target,
                    "target_min": spec.target_min,
                    "target_max": spec.target_max,
                    "dataset": spec.name,
                    "fingerprint": fp,
                    "metrics": metrics,
                }
            )
        )
        mlflow.log_artifacts(str(tmp), artifact_path="export")

        report("register model", 0.75)
        sample = Xb_tr.head(50)
        info = mlflow.sklearn.log_model(
            pipe,
            name="model",
            registered_model_name=settings.model_name,
            signature=infer_signature(sample, pipe.predict(sample)),
            input_example=Xb_tr.head(3),
            serialization_format="skops",
            skops_trusted_types=mio.skops_trusted_types(pipe),
        )
        version = int(info.registered_model_version)
        logger.info("registered %s v%d (run %s)", settings.model_name, version, run_id)

        report("approval gate", 0.85)
        with CHAMPION_LOCK:
            decision = _gate(settings, cl, version, challenger, naive, sets, tmp)
            exported_dir: Path | None = None
            if decision.promoted:
                report("export", 0.9)
                try:
                    exported_dir = export_model(
                        settings.models_path,
                        pipe,
                        columns,
                        X_ref,
                        y_ref,
                        target=spec.target,
                        model_name=settings.model_name,
                        version=version,
                        run_id=run_id,
                        metrics=metrics,
                        dataset=spec.name,
                        fingerprint=fp,
                        reason=request.reason,
                        reference_rows=settings.reference_rows,
                        keep=settings.export_keep,
                        target_min=spec.target_min,
                        target_max=spec.target_max,
                        model_uri=info.model_uri,
                    )
                except ExportError as exc:
                    decision = decision.model_copy(
                        update={
                            "promoted": False,
                            "reason": decision.reason + f"; NOT promoted: export failed: {exc.message}",
                        }
                    )
                    logger.error("export of v%d failed: %s", version, exc.message)
                else:
                    previous = decision.champion_version
                    mio.set_champion(cl, settings.model_name, version)
                    _record(
                        settings,
                        cl,
                        make_event(settings.model_name, version, previous, "gate", decision.reason),
                    )
            mio.set_version_tags(
                cl,
                settings.model_name,
                version,
                {
                    "gate.promoted": str(decision.promoted).lower(),
                    "gate.reason": decision.reason,
                    "gate.decision": decision.model_dump_json(),
                    "gradeflow.dataset": spec.name,
                    "gradeflow.dataset_fingerprint": fp,
                    "gradeflow.reason": request.reason,
                },
            )
            mlflow.set_tags(
                {"gate.promoted": str(decision.promoted).lower(), "gate.reason": decision.reason[:4900]}
            )
            mlflow.log_dict(decision.model_dump(mode="json"), "gate/decision.json")
    logger.info(
        "gate: v%d %s: %s", version, "PROMOTED" if decision.promoted else "not promoted", decision.reason
    )
    report("done", 1.0)
    return TrainResult(
        run_id=run_id,
        version=version,
        model_name=settings.model_name,
        metrics=metrics,
        decision=decision,
        exported=exported_dir is not None,
        export_dir=str(exported_dir) if exported_dir else None,
        rows=rows,
    )


def _gate(
    settings: TrainerSettings,
    cl: Any,
    version: int,
    challenger: dict[str, float],
    naive: dict[str, float],
    sets: dict[str, tuple[pd.DataFrame, pd.Series]],
    tmp: Path,
) -> GateDecision:
    champ = mio.champion_version(cl, settings.model_name)
    champ_metrics: dict[str, float] | None = None
    if champ is not None:
        try:
            champ_pipe = _champion_pipeline(settings, cl, champ, tmp / "champion")
            champ_metrics = _eval_sets(champ_pipe, sets)
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
                challenger=challenger,
                evaluated_on=list(sets),
            )
    return gate.decide(
        challenger,
        champ_metrics,
        naive,
        margin=settings.promotion_min_improvement,
        base_tolerance=settings.gate_base_tolerance,
        drift_ratio=settings.gate_drift_ratio,
        challenger_version=version,
        champion_version=champ,
    )


# ------------------------------------------------------------------ promote / rollback
def _ensure_export(settings: TrainerSettings, cl: Any, version: int, reason: str) -> Path:
    """Point MODEL_DIR/current at an export of ``version``: a kept one, else rebuilt from MLflow."""
    kept = mf.find_export(settings.models_path, version)
    if kept is not None:
        try:
            mf.verify_files(kept, mf.read_manifest(kept), keys=("model", "onnx"))
            mf.point_current(settings.models_path, kept, reason=reason, version=version)
            return kept
        except ExportError as exc:
            logger.warning("kept export %s unusable (%s); rebuilding from MLflow", kept, exc.message)
    mv = mio.get_version(cl, settings.model_name, version)
    with tempfile.TemporaryDirectory(prefix="gradeflow-export-") as tmpd:
        tmp = Path(tmpd)
        pipe = mio.load_version_model(cl, settings.model_name, version, tmp / "model")
        art = mio.download(cl, mv.run_id, "export", tmp / "art")
        columns = [ColumnSpec.model_validate(c) for c in json.loads((art / "columns.json").read_text())]
        meta = json.loads((art / "meta.json").read_text())
        ref = pd.read_csv(art / "reference.csv")
        target = meta["target"]
        X_ref = prepare_frame(ref, columns)
        y_ref = ref[target].astype(float)
        return export_model(
            settings.models_path,
            pipe,
            columns,
            X_ref,
            y_ref,
            target=target,
            model_name=settings.model_name,
            version=version,
            run_id=mv.run_id,
            metrics=meta.get("metrics", {}),
            dataset=meta.get("dataset", ""),
            fingerprint=meta.get("fingerprint", ""),
            reason=reason,
            reference_rows=settings.reference_rows,
            keep=settings.export_keep,
            target_min=meta.get("target_min"),
            target_max=meta.get("target_max"),
            model_uri=mv.source or "",
        )


def promote(
    settings: TrainerSettings, version: int, reason: str = "manual promotion", action: str = "promote"
) -> dict[str, Any]:
    """Make ``version`` the champion: export it, move the alias, record the event."""
    mio.configure(settings)
    cl = mio.client(settings)
    with CHAMPION_LOCK:
        mio.get_version(cl, settings.model_name, version)  # NotFound -> 404
        previous = mio.champion_version(cl, settings.model_name)
        export_dir = _ensure_export(settings, cl, version, reason)
        mio.set_champion(cl, settings.model_name, version)
        event = make_event(settings.model_name, version, previous, action, reason)
        _record(settings, cl, event)
    logger.info("%s: %s v%s -> v%d (%s)", action, settings.model_name, previous, version, reason)
    return {
        "model_name": settings.model_name,
        "version": version,
        "previous_version": previous,
        "action": action,
        "export_dir": str(export_dir),
        "event": event.model_dump(mode="json"),
    }


def rollback(settings: TrainerSettings, reason: str = "manual rollback") -> dict[str, Any]:
    """Return to the previous champion in the promotion history (Conflict when there is none)."""
    mio.configure(settings)
    cl = mio.client(settings)
    with CHAMPION_LOCK:
        events = history(settings, cl).events(settings.model_name)
        target = rollback_target(events)
        if target is None:
            raise Conflict(
                "no previous champion to roll back to", details={"champions": champion_stack(events)}
            )
        return promote(settings, target, reason=reason, action="rollback")


def champion_info(settings: TrainerSettings) -> dict[str, Any]:
    """The current champion (registry alias) and the export inference serves."""
    mio.configure(settings)
    cl = mio.client(settings)
    version = mio.champion_version(cl, settings.model_name)
    info: dict[str, Any] = {
        "model_name": settings.model_name,
        "alias": mio.ALIAS,
        "version": version,
        "run_id": None,
        "mlflow_run_url": None,
        "export": None,
    }
    if version is not None:
        mv = mio.get_version(cl, settings.model_name, version)
        info["run_id"] = mv.run_id
        info["tags"] = dict(mv.tags or {})
        info["tags"].pop("gate.decision", None)
        info["mlflow_run_url"] = mio.run_url(settings, mv.run_id)
    current = mf.read_current(settings.models_path)
    if current is not None:
        export_dir, m = current
        info["export"] = {"dir": str(export_dir), **mf.manifest_summary(m), "created_at": m.created_at}
    return info
