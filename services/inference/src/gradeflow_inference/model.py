"""Loading, verifying and running one export (plain functions; no FastAPI here).

A ``LoadedModel`` is immutable: hot reload builds a new one off the request path and swaps a
single reference (``ModelManager.current``), so a request that picked up a model keeps using
that object to the end and its answer names the version that produced it.

Predict paths: the ONNX graph through onnxruntime (one intra-op thread; ~0.05 ms for one row)
and the scikit-learn pipeline (faster for big batches on some models). The crossover batch
size is measured when the export is loaded; pandas and scikit-learn are imported only for the
scikit-learn path (lazily, so a cold start does not pay for them).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from gradeflow_shared.errors import ExportError
from gradeflow_shared.manifest import Manifest, read_manifest, read_reference_records, verify_files

from .schema import DEFAULT_MAX_STRING_LENGTH, Batch, RecordValidator, object_column

logger = logging.getLogger(__name__)

CROSSOVER_SIZES = (1, 100, 1000)
CROSSOVER_REPS = 5  # turns per path and batch size (about 0.3 s in all for a 100-tree forest)


@dataclass(frozen=True)
class LoadedModel:
    """One verified export, ready to predict (never mutated; replaced as a whole)."""

    export_dir: Path
    manifest: Manifest
    validator: RecordValidator
    onnx: Any | None  # onnxruntime.InferenceSession
    onnx_output: str | None
    sklearn: Any | None  # the fitted Pipeline, once loaded and verified
    sklearn_threshold: float  # batches with n >= this go to sklearn (inf: never)
    loaded_at: datetime
    verified: dict[str, Any]

    @property
    def version(self) -> int:
        return self.manifest.version

    def path_for(self, n: int) -> str:
        if self.onnx is None:
            return "sklearn"
        if self.sklearn is not None and n >= self.sklearn_threshold:
            return "sklearn"
        return "onnx"

    def predict(self, batch: Batch, path: str | None = None) -> list[float]:
        path = path or self.path_for(batch.n)
        if path == "onnx" and self.onnx is not None:
            out = self.onnx.run([self.onnx_output], batch.onnx_feed(self.validator))[0]
            return np.asarray(out, dtype=np.float64).reshape(-1).tolist()
        return sklearn_predict(self.sklearn, self.validator, batch)

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "model_name": m.model_name,
            "version": m.version,
            "run_id": m.run_id,
            "model_uri": m.model_uri,
            "dataset": m.dataset,
            "target": m.target,
            "metrics": m.metrics,
            "created_at": m.created_at,
            "export_dir": str(self.export_dir),
            "loaded_at": self.loaded_at.isoformat(),
            "predict_paths": {
                "onnx": self.onnx is not None,
                "sklearn": self.sklearn is not None,
                "sklearn_from_batch_size": None
                if math.isinf(self.sklearn_threshold)
                else self.sklearn_threshold,
            },
            "verification": self.verified,
        }


def sklearn_frame(validator: RecordValidator, batch: Batch) -> Any:
    import pandas as pd

    data: dict[str, Any] = {}
    for f in validator.features:
        col = batch.columns[f.name]
        if f.numeric:
            data[f.name] = np.array(col, dtype=np.float64)
        else:
            data[f.name] = object_column(col, np.nan)
    return pd.DataFrame(data, columns=[f.name for f in validator.features])


def sklearn_predict(pipeline: Any, validator: RecordValidator, batch: Batch) -> list[float]:
    out = pipeline.predict(sklearn_frame(validator, batch))
    return np.asarray(out, dtype=np.float64).reshape(-1).tolist()


# ------------------------------------------------------------------------------------ loading
def _reference_batch(validator: RecordValidator, records: list[dict[str, Any]]) -> Batch:
    # reference rows may lie outside the hard bounds or hold nulls for non-nullable columns; build the
    # columns directly instead of validating them
    cols: dict[str, list[Any]] = {f.name: [] for f in validator.features}
    for rec in records:
        for f in validator.features:
            v = rec.get(f.name)
            cols[f.name].append(float(v) if (f.numeric and v is not None) else v)
    return Batch(n=len(records), columns=cols)


def _check_finite(values: list[float], what: str, manifest: Manifest) -> None:
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ExportError(f"{what} of version {manifest.version} returned {len(bad)} non-finite predictions")


def open_onnx(path: Path) -> tuple[Any, str]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a bad graph
        raise ExportError(f"model.onnx in {path.parent} does not load: {exc}") from exc
    outputs = sess.get_outputs()
    if len(outputs) != 1:
        raise ExportError(f"model.onnx has {len(outputs)} outputs, expected 1")
    return sess, outputs[0].name


def load_export(
    export_dir: Path,
    *,
    with_sklearn: bool = True,
    tolerance: float = 0.05,
    verify_rows: int = 200,
    predict_path: str = "auto",
    max_string_length: int = DEFAULT_MAX_STRING_LENGTH,
) -> LoadedModel:
    """Read, verify and open one export directory (raise ExportError when anything is wrong).

    Checks: the manifest parses; sha256 and size of model.onnx and (with_sklearn) model.joblib match
    the manifest before anything is deserialized; a test prediction on the reference sample is
    finite; with both paths, ONNX and scikit-learn agree within ``tolerance``.
    """
    t0 = time.perf_counter()
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    validator = RecordValidator(manifest, max_string_length)
    has_onnx = "onnx" in manifest.files and predict_path != "sklearn"
    if not has_onnx and not with_sklearn:
        with_sklearn = True
    keys = (("onnx",) if has_onnx else ()) + (("model",) if with_sklearn else ())
    verify_files(export_dir, manifest, keys=keys)
    ref = _reference_batch(validator, read_reference_records(export_dir, manifest, verify_rows))
    verified: dict[str, Any] = {"sha256": list(keys), "reference_rows": ref.n}

    sess = out_name = None
    onnx_pred: list[float] | None = None
    if has_onnx:
        sess, out_name = open_onnx(export_dir / manifest.files["onnx"].path)
        try:
            raw = sess.run([out_name], ref.onnx_feed(validator))[0]
        except Exception as exc:  # wrong input names / types in the graph
            raise ExportError(
                f"model.onnx of version {manifest.version} fails on the reference sample: {exc}"
            ) from exc
        onnx_pred = np.asarray(raw, dtype=np.float64).reshape(-1).tolist()
        if len(onnx_pred) != ref.n:
            raise ExportError(f"model.onnx returned {len(onnx_pred)} predictions for {ref.n} rows")
        _check_finite(onnx_pred, "model.onnx", manifest)

    pipeline = None
    threshold = math.inf if has_onnx else 0.0
    if with_sklearn:
        pipeline = load_pipeline(export_dir, manifest)
        try:
            sk_pred = sklearn_predict(pipeline, validator, ref)
        except Exception as exc:  # any failure of the unpickled pipeline on valid data
            raise ExportError(
                f"model.joblib of version {manifest.version} fails on the reference sample: {exc}"
            ) from exc
        _check_finite(sk_pred, "model.joblib", manifest)
        if onnx_pred is not None:
            diff = max(abs(a - b) for a, b in zip(onnx_pred, sk_pred, strict=True))
            verified["onnx_sklearn_max_abs_diff"] = diff
            if diff > tolerance:
                raise ExportError(
                    f"ONNX and scikit-learn disagree on the reference sample of version {manifest.version}: "
                    f"max abs diff {diff:.4g} > tolerance {tolerance:g}"
                )
            if predict_path == "auto":
                threshold, timings = measure_crossover(sess, out_name, pipeline, validator, ref)
                verified["crossover_ms"] = timings
            elif predict_path == "sklearn":
                threshold = 0.0
    verified["seconds"] = round(time.perf_counter() - t0, 3)
    return LoadedModel(
        export_dir=export_dir,
        manifest=manifest,
        validator=validator,
        onnx=sess,
        onnx_output=out_name,
        sklearn=pipeline,
        sklearn_threshold=threshold,
        loaded_at=datetime.now(UTC),
        verified=verified,
    )


def load_pipeline(export_dir: Path, manifest: Manifest) -> Any:
    """joblib.load the pipeline: only call after verify_files(..., ("model",)) passed."""
    import joblib

    try:
        return joblib.load(export_dir / manifest.files["model"].path)
    except Exception as exc:  # unpickling can raise anything
        raise ExportError(f"model.joblib of version {manifest.version} does not load: {exc}") from exc


def with_sklearn(model: LoadedModel, tolerance: float, verify_rows: int, predict_path: str) -> LoadedModel:
    """A copy of an ONNX-only model with the scikit-learn path verified and attached (for after start-up)."""
    full = load_export(
        model.export_dir,
        with_sklearn=True,
        tolerance=tolerance,
        verify_rows=verify_rows,
        predict_path=predict_path,
    )
    if full.manifest.version != model.manifest.version:
        raise ExportError("export changed while attaching scikit-learn")
    return dataclasses.replace(
        model,
        sklearn=full.sklearn,
        sklearn_threshold=full.sklearn_threshold,
        verified={**model.verified, **full.verified},
    )


def _tile(ref: Batch, n: int) -> Batch:
    cols = {k: (v * (n // len(v) + 1))[:n] for k, v in ref.columns.items()}
    return Batch(n=n, columns=cols)


def measure_crossover(
    sess: Any,
    out_name: str | None,
    pipeline: Any,
    validator: RecordValidator,
    ref: Batch,
    reps: int = CROSSOVER_REPS,
) -> tuple[float, dict[str, dict[str, float]]]:
    """Time both paths at a few batch sizes; the smallest size where scikit-learn wins (inf: never).

    The two paths take turns (``reps`` times each, alternating which goes first) and the best time of
    each is compared: a burst of load on a shared machine (another service starting, a training job)
    then slows both paths alike instead of only the one measured at that moment, which once made the
    choice fall on the path that is twice as slow for good. scikit-learn must win by 10 %.
    """
    timings: dict[str, dict[str, float]] = {}
    threshold = math.inf
    for n in CROSSOVER_SIZES:
        b = _tile(ref, n)
        t_onnx, t_sk = _best_alternating(
            lambda b=b: sess.run([out_name], b.onnx_feed(validator)),
            lambda b=b: sklearn_predict(pipeline, validator, b),
            reps,
        )
        timings[str(n)] = {"onnx": round(t_onnx * 1000, 3), "sklearn": round(t_sk * 1000, 3)}
        if t_sk < t_onnx * 0.9 and math.isinf(threshold):
            threshold = float(n)
    return threshold, timings


def _best_alternating(a: Any, b: Any, reps: int) -> tuple[float, float]:
    """Best time of ``a`` and of ``b`` over ``reps`` turns each, run in turns (a b, b a, a b, ...)."""
    best = [math.inf, math.inf]
    fns = (a, b)
    for i in range(reps):
        for j in (0, 1) if i % 2 == 0 else (1, 0):
            t = time.perf_counter()
            fns[j]()
            best[j] = min(best[j], time.perf_counter() - t)
    return best[0], best[1]


# ------------------------------------------------------------------------------------ manager
@dataclass(frozen=True)
class ReloadAttempt:
    at: datetime
    export_dir: str
    version: int | None
    ok: bool
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "export_dir": self.export_dir,
            "version": self.version,
            "ok": self.ok,
            "error": self.error,
        }


class ModelManager:
    """Holds the serving model (one reference) and the watcher thread that hot-reloads it."""

    def __init__(
        self,
        model_dir: Path,
        *,
        interval: float = 0.5,
        tolerance: float = 0.05,
        verify_rows: int = 200,
        predict_path: str = "auto",
        max_string_length: int = DEFAULT_MAX_STRING_LENGTH,
        on_reload: Any = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.max_string_length = max_string_length
        self.interval = interval
        self.tolerance = tolerance
        self.verify_rows = verify_rows
        self.predict_path = predict_path
        self.on_reload = on_reload  # callable(ok: bool) for metrics
        self.current: LoadedModel | None = None
        self.last_attempt: ReloadAttempt | None = None
        self._refused: dict[str, float] = {}  # export dir -> manifest mtime when refused
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._needs_sklearn = False

    # -- loading
    def _export_key(self, export_dir: Path) -> float:
        try:
            return (export_dir / "manifest.json").stat().st_mtime
        except OSError:
            return -1.0

    def try_load(self, export_dir: Path, *, fast: bool = False) -> bool:
        """Load and verify ``export_dir``; swap it in on success. Never raises for a bad export."""
        version: int | None = None
        try:
            try:
                version = read_manifest(export_dir).version
            except ExportError:
                version = None
            model = load_export(
                export_dir,
                with_sklearn=not fast,
                tolerance=self.tolerance,
                verify_rows=self.verify_rows,
                predict_path=self.predict_path,
                max_string_length=self.max_string_length,
            )
        except ExportError as exc:
            self._refuse(export_dir, version, str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - any failure refuses the export, the old model keeps serving
            self._refuse(export_dir, version, f"{exc.__class__.__name__}: {exc}")
            return False
        old = self.current
        self.current = model  # the swap: one reference assignment
        self._needs_sklearn = fast and model.onnx is not None and self.predict_path != "onnx"
        self.last_attempt = ReloadAttempt(datetime.now(UTC), str(export_dir), model.version, True)
        logger.info(
            "serving model %s version %s from %s (was %s; verified in %.2fs)",
            model.manifest.model_name,
            model.version,
            export_dir,
            old.version if old else None,
            model.verified.get("seconds", 0.0),
        )
        if self.on_reload:
            self.on_reload(True)
        return True

    def _refuse(self, export_dir: Path, version: int | None, reason: str) -> None:
        self._refused[str(export_dir)] = self._export_key(export_dir)
        self.last_attempt = ReloadAttempt(datetime.now(UTC), str(export_dir), version, False, reason)
        logger.error(
            "refused export %s (version %s): %s; still serving version %s",
            export_dir,
            version,
            reason,
            self.current.version if self.current else None,
        )
        if self.on_reload:
            self.on_reload(False)

    def check_once(self, *, fast: bool = False) -> None:
        """Load the export ``current`` points to if it is new (and not already refused unchanged)."""
        from gradeflow_shared.manifest import resolve_current

        export_dir = resolve_current(self.model_dir)
        if export_dir is None:
            return
        cur = self.current
        if cur is not None and cur.export_dir == export_dir:
            if self._needs_sklearn:
                self._attach_sklearn(cur)
            return
        key = str(export_dir)
        if key in self._refused and self._refused[key] == self._export_key(export_dir):
            return
        # with nothing serving, get ready on the verified ONNX path first; scikit-learn is attached next
        self.try_load(export_dir, fast=fast or cur is None)

    def _attach_sklearn(self, cur: LoadedModel) -> None:
        self._needs_sklearn = False
        try:
            full = with_sklearn(cur, self.tolerance, self.verify_rows, self.predict_path)
        except Exception as exc:  # noqa: BLE001 - keep serving the verified ONNX path
            logger.error(
                "scikit-learn path of version %s not verified (%s); serving ONNX only", cur.version, exc
            )
            self.last_attempt = ReloadAttempt(
                datetime.now(UTC), str(cur.export_dir), cur.version, False, f"sklearn path refused: {exc}"
            )
            return
        if self.current is cur:
            self.current = full
            logger.info("version %s: scikit-learn path verified (%s)", cur.version, full.verified)

    # -- watcher
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - the watcher must survive anything (logged)
                logger.exception("model watcher iteration failed")
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
