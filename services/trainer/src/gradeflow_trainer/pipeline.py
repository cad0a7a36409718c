"""The ML core of the trainer: split, build, search, fit, evaluate, compile to ONNX.

Plain functions, no MLflow and no HTTP. The fitted object is one scikit-learn ``Pipeline``:
``ColumnTransformer`` (numeric -> median imputer, no scaler, since trees need none and a
scaler in front of float32 ONNX trees breaks agreement; categorical -> fill
``MISSING_CATEGORY`` + one-hot with unknown values ignored) followed by the regressor. Only
families that skl2onnx converts exactly are offered.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingRegressor,
    RandomForestRegressor,
    VotingRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import KFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from gradeflow_shared.errors import ExportError
from gradeflow_shared.manifest import MISSING_CATEGORY

from .progress import Progress

logger = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-3  # grade points
ONNX_OPSET = 17


class _Column(Protocol):
    """ColumnSpec (datasets) or FeatureSpec (manifest): anything with a name and a kind."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...


# ------------------------------------------------------------------ data
def split(
    X: pd.DataFrame, y: pd.Series, test_size: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """Random train/test split (``X_train, X_test, y_train, y_test``), indices reset."""
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, random_state=seed)
    return (
        X_tr.reset_index(drop=True),
        X_te.reset_index(drop=True),
        y_tr.reset_index(drop=True),
        y_te.reset_index(drop=True),
    )


def _split_kinds(columns: Sequence[_Column]) -> tuple[list[str], list[str]]:
    num = [c.name for c in columns if c.kind == "numeric"]
    cat = [c.name for c in columns if c.kind == "categorical"]
    return num, cat


def prepare_frame(X: pd.DataFrame, columns: Sequence[_Column]) -> pd.DataFrame:
    """Coerce a frame to what the pipeline expects: float numerics, object strings (NaN missing)."""
    out = pd.DataFrame(index=X.index)
    for c in columns:
        s = X[c.name] if c.name in X.columns else pd.Series(np.nan, index=X.index)
        if c.kind == "numeric":
            out[c.name] = pd.to_numeric(s, errors="coerce").astype(float)
        else:
            mask = s.notna()
            obj = s.astype(object)
            out[c.name] = obj.where(~mask, obj[mask].map(str)).where(mask, np.nan).astype(object)
    return out


# ------------------------------------------------------------------ model families
FAMILIES = ("rf", "et", "gbr", "ridge", "blend")


def _regressor(family: str, params: Mapping[str, Any], seed: int) -> Any:
    p = dict(params)
    if family == "rf":
        p.setdefault("n_estimators", 200)
        return RandomForestRegressor(random_state=seed, n_jobs=1, **p)
    if family == "et":
        p.setdefault("n_estimators", 200)
        return ExtraTreesRegressor(random_state=seed, n_jobs=1, **p)
    if family == "gbr":
        p.setdefault("n_estimators", 200)
        return GradientBoostingRegressor(random_state=seed, **p)
    if family == "ridge":
        return Ridge(**p)
    if family == "blend":
        # average of a forest and a boosted ensemble: steadier than either alone on small data
        rf_p = {k[3:]: v for k, v in p.items() if k.startswith("rf_")}
        gb_p = {k[4:]: v for k, v in p.items() if k.startswith("gbr_")}
        return VotingRegressor(
            [("rf", _regressor("rf", rf_p, seed)), ("gbr", _regressor("gbr", gb_p, seed))], n_jobs=1
        )
    raise ValueError(f"unknown model family '{family}' (known: {', '.join(FAMILIES)})")


def build_pipeline(
    columns: Sequence[_Column], family: str, params: Mapping[str, Any], seed: int = 0
) -> Pipeline:
    """Unfitted pipeline: ColumnTransformer (impute / one-hot) + regressor of ``family``."""
    num, cat = _split_kinds(columns)
    transformers: list[tuple[str, Any, list[str]]] = []
    if num:
        transformers.append(("num", SimpleImputer(strategy="median", keep_empty_features=True), num))
    if cat:
        transformers.append(
            (
                "cat",
                Pipeline(
                    [
                        ("fill", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
                        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                cat,
            )
        )
    pre = ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)
    return Pipeline([("pre", pre), ("model", _regressor(family, params, seed))])


def search_space(n_rows: int) -> list[tuple[str, dict[str, Any]]]:
    """The bounded candidate list (family, params), sized to the data.

    The first candidate is the preferred default (see SELECT_TOLERANCE). Large data (the
    synthetic 5,000 rows): boosted trees learn the smooth non-linear effects best and stay
    small in ONNX. Small real data (UCI, a few hundred rows): a random forest, alone or
    averaged with a shallow boosted ensemble; measured in results/uci_benchmark.md.
    """
    if n_rows > 2000:
        return [
            ("gbr", {"n_estimators": 300, "learning_rate": 0.05, "max_depth": 3, "subsample": 0.8}),
            (
                "gbr",
                {
                    "n_estimators": 250,
                    "learning_rate": 0.08,
                    "max_depth": 4,
                    "subsample": 0.8,
                    "min_samples_leaf": 10,
                },
            ),
            ("ridge", {"alpha": 3.0}),
        ]
    # small data: a random forest, alone or averaged with a shallow, slow, subsampled boosted ensemble
    gbr = {
        "gbr_n_estimators": 200,
        "gbr_learning_rate": 0.03,
        "gbr_max_depth": 2,
        "gbr_subsample": 0.7,
        "gbr_min_samples_leaf": 10,
    }
    return [
        ("rf", {"n_estimators": 500, "max_features": 0.5}),
        ("blend", {"rf_n_estimators": 500, "rf_max_features": 0.5, **gbr}),
        ("blend", {"rf_n_estimators": 500, "rf_max_features": 1.0, **gbr}),
    ]


# the search keeps the first (preferred) candidate unless another beats its CV RMSE by more than this
SELECT_TOLERANCE = 0.01


@dataclass
class FitResult:
    pipeline: Pipeline
    family: str
    params: dict[str, Any]
    cv_rmse: dict[str, float] = field(default_factory=dict)  # candidate label -> mean CV RMSE
    seconds: float = 0.0
    candidates: int = 1  # in the search space
    tried: int = 0  # scored by CV (0: no search)
    budget_seconds: float | None = None  # the search's time budget (None: unbounded)
    budget_stopped: bool = False  # the budget ended the search before every candidate was tried
    search_seconds: float = 0.0  # time spent in the CV search


def _label(family: str, params: Mapping[str, Any]) -> str:
    return family + "(" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"


def _rmse(y: Any, p: Any, w: Any = None) -> float:
    return float(math.sqrt(mean_squared_error(y, p, sample_weight=w)))


def _weights(w: np.ndarray | None, idx: np.ndarray | None) -> dict[str, Any]:
    if w is None:
        return {}
    return {"model__sample_weight": w if idx is None else w[idx]}


def fit(
    X: pd.DataFrame,
    y: pd.Series,
    columns: Sequence[_Column],
    seed: int = 0,
    search: bool = True,
    progress: Progress | None = None,
    candidates: Iterable[tuple[str, dict[str, Any]]] | None = None,
    folds: int | None = None,
    sample_weight: Sequence[float] | np.ndarray | None = None,
    budget_seconds: float | None = None,
) -> FitResult:
    """Pick a model by K-fold CV over a small search space, then refit it on all of ``X``.

    ``candidates`` overrides the search space (the first one is used when ``search`` is off);
    ``sample_weight`` (one per row) weights both fitting and the CV score, e.g. to let recent
    labelled production rows outweigh the base dataset after concept drift.

    ``budget_seconds`` bounds the search: the first candidate is always scored; a further one is
    started only while the time spent so far plus the mean time of a candidate so far fits in the
    budget. The best candidate scored so far wins (``FitResult.tried``, ``budget_stopped`` say what
    happened). The refit on all rows comes on top of the budget.
    """
    t0 = time.monotonic()
    Xp = prepare_frame(X, columns).reset_index(drop=True)
    yv = pd.Series(np.asarray(y, dtype=float))
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=float)
    if w is not None and len(w) != len(yv):
        raise ValueError(f"sample_weight has {len(w)} values for {len(yv)} rows")
    cands = list(candidates) if candidates is not None else search_space(len(Xp))
    cv: dict[str, float] = {}
    tried = 0
    stopped = False
    search_secs = 0.0
    if search and len(cands) > 1:
        k = folds or (3 if len(Xp) > 2000 else 5)
        kf = KFold(n_splits=k, shuffle=True, random_state=seed)
        splits = list(kf.split(Xp))
        best: tuple[float, str, dict[str, Any]] | None = None
        t_search = time.monotonic()
        for i, (family, params) in enumerate(cands):
            spent = time.monotonic() - t_search
            if budget_seconds is not None and tried and spent + spent / tried > budget_seconds:
                stopped = True
                logger.info(
                    "search budget %.0fs: stopped after %d of %d candidates (%.1fs spent)",
                    budget_seconds,
                    tried,
                    len(cands),
                    spent,
                )
                break
            if progress:
                progress(f"cv {family}", i / (len(cands) + 1))
            errs = []
            for tr, va in splits:
                pipe = build_pipeline(columns, family, params, seed)
                pipe.fit(Xp.iloc[tr], yv.iloc[tr], **_weights(w, tr))
                pred = pipe.predict(Xp.iloc[va])
                errs.append(_rmse(yv.iloc[va], pred, None if w is None else w[va]))
            score = float(np.mean(errs))
            cv[_label(family, params)] = score
            logger.info("cv %s rmse=%.4f", _label(family, params), score)
            tried += 1
            if best is None or score < best[0]:
                best = (score, family, dict(params))
        search_secs = time.monotonic() - t_search
        assert best is not None
        _, family, params = best
        first = _label(*cands[0])
        if cv[first] <= best[0] * (1.0 + SELECT_TOLERANCE):  # CV noise must not pick a worse model
            family, params = cands[0][0], dict(cands[0][1])
    else:
        family, params = cands[0]
    if progress:
        progress(f"refit {family}", len(cands) / (len(cands) + 1))
    pipe = build_pipeline(columns, family, params, seed)
    pipe.fit(Xp, yv, **_weights(w, None))
    if progress:
        progress("fitted", 1.0)
    secs = time.monotonic() - t0
    logger.info("fit: chose %s in %.1fs", _label(family, params), secs)
    return FitResult(
        pipeline=pipe,
        family=family,
        params=dict(params),
        cv_rmse=cv,
        seconds=secs,
        candidates=len(cands),
        tried=tried,
        budget_seconds=budget_seconds,
        budget_stopped=stopped,
        search_seconds=round(search_secs, 3),
    )


# ------------------------------------------------------------------ evaluation
def evaluate(pipeline: Pipeline, X: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    """MAE, RMSE and R² of the pipeline on (X, y)."""
    pred = pipeline.predict(X)
    return _metrics(np.asarray(y, dtype=float), np.asarray(pred, dtype=float))


def _metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    r2 = float(r2_score(y, pred)) if len(y) > 1 else float("nan")
    return {"mae": float(mean_absolute_error(y, pred)), "rmse": _rmse(y, pred), "r2": r2}


def naive_metrics(y_train: pd.Series, y_test: pd.Series) -> dict[str, float]:
    """The same metrics for predicting the training mean."""
    yt = np.asarray(y_test, dtype=float)
    return _metrics(yt, np.full(len(yt), float(np.mean(np.asarray(y_train, dtype=float)))))


# ------------------------------------------------------------------ ONNX
def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    try:
        return bool(pd.isna(v)) if not isinstance(v, (str, bytes, list, dict, tuple)) else False
    except (TypeError, ValueError):
        return False


def _to_float(v: Any) -> float:
    if _is_missing(v):
        return float("nan")
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        v = v.strip()
        if v == "":
            return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _to_category(v: Any) -> str:
    if _is_missing(v):
        return MISSING_CATEGORY
    s = str(v).strip()
    return s if s else MISSING_CATEGORY


def onnx_inputs(df_or_records: Any, features: Sequence[_Column]) -> dict[str, np.ndarray]:
    """The ONNX feed: one ``[N, 1]`` array per feature (float32 numerics, NaN for missing;
    strings for categoricals, ``MISSING_CATEGORY`` for missing). Accepts a list of dicts
    (no pandas needed), a single dict, or a DataFrame. Unknown keys are ignored."""
    if isinstance(df_or_records, pd.DataFrame):
        records: Sequence[Mapping[Any, Any]] = df_or_records.to_dict(orient="records")
    elif isinstance(df_or_records, Mapping):
        records = [df_or_records]
    else:
        records = list(df_or_records)
    n = len(records)
    feed: dict[str, np.ndarray] = {}
    for f in features:
        if f.kind == "numeric":
            arr = np.fromiter((_to_float(r.get(f.name)) for r in records), dtype=np.float64, count=n)
            feed[f.name] = arr.astype(np.float32).reshape(n, 1)
        else:
            feed[f.name] = np.array([_to_category(r.get(f.name)) for r in records], dtype=object).reshape(
                n, 1
            )
    return feed


def _register_missing_imputer_shortcut() -> None:
    """The categorical ``SimpleImputer`` fills NaN with MISSING_CATEGORY; in ONNX the feed already
    carries MISSING_CATEGORY for missing strings (the contract), so the imputer is an identity."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.data_types import StringTensorType
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer
    from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes

    def _shape(operator: Any) -> None:
        if isinstance(operator.inputs[0].type, StringTensorType) or (
            len(operator.inputs) and all(isinstance(i.type, StringTensorType) for i in operator.inputs)
        ):
            n = operator.inputs[0].get_first_dimension()
            width = sum(i.type.shape[1] or 1 for i in operator.inputs)
            operator.outputs[0].type = StringTensorType([n, width])
            return
        calculate_sklearn_imputer_output_shapes(operator)

    def _convert(scope: Any, operator: Any, container: Any) -> None:
        if isinstance(operator.inputs[0].type, StringTensorType):
            names = [i.full_name for i in operator.inputs]
            if len(names) == 1:
                container.add_node(
                    "Identity",
                    names[0],
                    operator.outputs[0].full_name,
                    name=scope.get_unique_operator_name("MissingCatIdentity"),
                )
            else:
                container.add_node(
                    "Concat",
                    names,
                    operator.outputs[0].full_name,
                    axis=1,
                    name=scope.get_unique_operator_name("MissingCatConcat"),
                )
            return
        convert_sklearn_imputer(scope, operator, container)

    update_registered_converter(SimpleImputer, "SklearnImputer", _shape, _convert)


def compile_onnx(
    pipeline: Pipeline, columns: Sequence[_Column], X_sample: pd.DataFrame
) -> tuple[bytes, float]:
    """Compile the fitted pipeline with skl2onnx (one input per feature) and verify it.

    Returns ``(onnx_bytes, max_abs_diff)`` against sklearn on ``X_sample``; raises
    ExportError when conversion fails or the difference exceeds ONNX_TOLERANCE.
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    _register_missing_imputer_shortcut()
    initial_types = [
        (c.name, FloatTensorType([None, 1]) if c.kind == "numeric" else StringTensorType([None, 1]))
        for c in columns
    ]
    try:
        model = convert_sklearn(pipeline, initial_types=initial_types, target_opset=ONNX_OPSET)
    except Exception as exc:  # skl2onnx raises many types; all mean "cannot export"
        raise ExportError(
            f"skl2onnx could not convert the pipeline: {exc.__class__.__name__}: {exc}"
        ) from exc
    data = model.SerializeToString()
    diff = onnx_max_abs_diff(data, pipeline, columns, X_sample)
    if not diff <= ONNX_TOLERANCE:
        raise ExportError(
            f"ONNX and sklearn predictions differ by up to {diff:.6f} grade points (> {ONNX_TOLERANCE})",
            details={"max_abs_diff": diff},
        )
    return data, diff


def onnx_predict(onnx_bytes_or_session: Any, feed: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    if isinstance(onnx_bytes_or_session, (bytes, bytearray)):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(bytes(onnx_bytes_or_session), opts, providers=["CPUExecutionProvider"])
    else:
        sess = onnx_bytes_or_session
    out = sess.run(None, feed)[0]
    return np.asarray(out, dtype=np.float64).reshape(-1)


def onnx_max_abs_diff(
    onnx_bytes: bytes, pipeline: Pipeline, columns: Sequence[_Column], X: pd.DataFrame
) -> float:
    """Largest |ONNX - sklearn| prediction over the rows of X (0.0 for an empty X)."""
    if len(X) == 0:
        return 0.0
    Xp = prepare_frame(X, columns)
    ref = np.asarray(pipeline.predict(Xp), dtype=np.float64).reshape(-1)
    got = onnx_predict(onnx_bytes, onnx_inputs(Xp, columns))
    if got.shape != ref.shape:
        raise ExportError(f"ONNX output shape {got.shape} != sklearn {ref.shape}")
    if np.isnan(got).any():
        return float("inf")
    return float(np.max(np.abs(got - ref)))
