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
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from gradeflow_shared.errors import ExportError
from gradeflow_shared.manifest import (
    CHAMPION_FILE,
    CURRENT,
    ChampionMarker,
    Manifest,
    list_exports,
    read_champion_marker,
    read_manifest,
    read_reference_records,
    verify_files,
)

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
    fallback_reason: str | None = None  # set when served in place of the export ``current`` points to

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
            "fallback": self.fallback_reason is not None,
            "reason": self.fallback_reason,
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


def export_identity(export_dir: Path) -> tuple[tuple[str, int, int, int], ...]:
    """Content identity of an export folder: (name, size, mtime_ns, inode) of every file in it.

    A refused export is retried when this changes: a file repaired in place or replaced, a file added."""
    out = []
    try:
        with os.scandir(export_dir) as it:
            for e in it:
                st = e.stat(follow_symlinks=True)
                out.append((e.name, st.st_size, st.st_mtime_ns, st.st_ino))
    except OSError:
        return ()
    return tuple(sorted(out))


def link_identity(link: Path) -> tuple[str, int, int] | None:
    """(target, inode, mtime_ns) of the ``current`` symlink itself: re-pointing it, even to the same
    folder, makes a new link (``point_current`` renames a fresh symlink over it) and so a new identity."""
    try:
        st = os.lstat(link)
        return os.readlink(link), st.st_ino, st.st_mtime_ns
    except OSError:
        return None


def fallback_candidates(
    model_dir: Path, exclude: Path | None, marker: ChampionMarker | None
) -> list[tuple[Path, Manifest, str]]:
    """Exports to serve when nothing is loaded and ``current`` cannot be, best first, with why each one.

    With a champion marker: the exports of the marker's version and run id (newest folder first), then the
    exports of OLDER versions (newest first); never a version newer than the marker's (rolled back or never
    promoted). Without a marker: every export, newest version first."""
    items: list[tuple[Path, Manifest]] = []
    for p in list_exports(model_dir):
        rp = p.resolve()
        if exclude is not None and rp == exclude:
            continue
        try:
            items.append((rp, read_manifest(rp)))
        except ExportError:
            continue
    items.sort(key=lambda pm: (pm[1].version, pm[0].name), reverse=True)
    if marker is None:
        why = f"the newest valid export; no {CHAMPION_FILE} to check it against"
        return [(p, m, why) for p, m in items]
    champ = [
        (p, m, f"the champion of {CHAMPION_FILE}")
        for p, m in items
        if m.version == marker.version and m.run_id == marker.run_id
    ]
    older = [
        (
            p,
            m,
            f"no valid export of the champion v{marker.version} (run {marker.run_id}) of {CHAMPION_FILE}; "
            "the newest valid older export",
        )
        for p, m in items
        if m.version < marker.version
    ]
    return champ + older


def serving_status(
    model: LoadedModel | None, marker: ChampionMarker | None, marker_error: str | None
) -> dict[str, Any]:
    """What is served vs what the registry's champion marker says (GET /model, /ready, /health).

    ``consistent`` is False when ``champion.json`` exists and names another version or run id than the
    export being served; ``warnings`` says why in words (also for a fallback and an unreadable marker)."""
    warnings: list[str] = []
    consistent = True
    if model is not None and model.fallback_reason:
        warnings.append(f"fallback: {model.fallback_reason}")
    if marker_error:
        warnings.append(marker_error)
    if (
        model is not None
        and marker is not None
        and (model.version, model.manifest.run_id) != (marker.version, marker.run_id)
    ):
        consistent = False
        warnings.append(
            f"inconsistent: serving v{model.version} (run {model.manifest.run_id}) but {CHAMPION_FILE} "
            f"says the champion is v{marker.version} (run {marker.run_id})"
        )
    return {
        "serving_version": model.version if model else None,
        "serving_run_id": model.manifest.run_id if model else None,
        "fallback": bool(model is not None and model.fallback_reason),
        "reason": model.fallback_reason if model is not None else None,
        "consistent": consistent,
        "champion": marker.model_dump(mode="json") if marker is not None else None,
        "warnings": warnings,
    }


class ModelManager:
    """Holds the serving model (one reference) and the watcher thread that hot-reloads it.

    Self-repair: an export ``current`` points to that cannot be loaded is refused (the old model keeps
    serving) and retried as soon as its content identity changes (size, mtime and inode of every file of
    the folder) or ``current`` is re-pointed, even to the same folder. With nothing loaded (start-up) the
    manager falls back to the best valid export on disk (``fallback_candidates``) and says so
    (``LoadedModel.fallback_reason``); once ``current`` loads, it serves that. The champion marker
    (``champion.json``) is re-read on the same poll when its stat changes.
    """

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
        self.marker: ChampionMarker | None = None
        self.marker_error: str | None = None
        self._marker_key: Any = None
        # export dir -> (identity when refused, why, version): not retried while the identity is the same
        self._refused: dict[str, tuple[Any, str, int | None]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._needs_sklearn = False

    def status(self) -> dict[str, Any]:
        return serving_status(self.current, self.marker, self.marker_error)

    # -- loading
    def try_load(
        self, export_dir: Path, *, fast: bool = False, key: Any = None, fallback_reason: str | None = None
    ) -> bool:
        """Load and verify ``export_dir``; swap it in on success. Never raises for a bad export.

        ``key``: the identity remembered when it is refused; ``fallback_reason``: set when this export is
        served in place of the one ``current`` points to."""
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
            self._refuse(export_dir, version, str(exc), key)
            return False
        except Exception as exc:  # noqa: BLE001 - any failure refuses the export, the old model keeps serving
            self._refuse(export_dir, version, f"{exc.__class__.__name__}: {exc}", key)
            return False
        if fallback_reason:
            model = dataclasses.replace(model, fallback_reason=fallback_reason)
        old = self.current
        self.current = model  # the swap: one reference assignment
        self._refused.pop(str(export_dir), None)
        self._needs_sklearn = fast and model.onnx is not None and self.predict_path != "onnx"
        self.last_attempt = ReloadAttempt(datetime.now(UTC), str(export_dir), model.version, True)
        logger.log(
            logging.WARNING if fallback_reason else logging.INFO,
            "serving model %s version %s from %s (was %s; verified in %.2fs)%s",
            model.manifest.model_name,
            model.version,
            export_dir,
            old.version if old else None,
            model.verified.get("seconds", 0.0),
            f" as a FALLBACK: {fallback_reason}" if fallback_reason else "",
        )
        if self.on_reload:
            self.on_reload(True)
        return True

    def _refuse(self, export_dir: Path, version: int | None, reason: str, key: Any) -> None:
        self._refused[str(export_dir)] = (
            key if key is not None else (None, export_identity(export_dir)),
            reason,
            version,
        )
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

    def check_marker(self) -> None:
        """Re-read ``champion.json`` when its stat changed (a stat per poll otherwise)."""
        path = self.model_dir / CHAMPION_FILE
        try:
            st = os.stat(path)
            key: Any = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        except OSError as exc:
            key = ("error", str(exc))
        if key == self._marker_key:
            return
        self._marker_key = key
        try:
            self.marker, self.marker_error = read_champion_marker(self.model_dir), None
        except ExportError as exc:
            self.marker, self.marker_error = None, str(exc)
            logger.error("%s", exc)
            return
        if self.marker is not None:
            logger.info(
                "champion marker: %s v%s (run %s)",
                self.marker.model_name,
                self.marker.version,
                self.marker.run_id,
            )

    def check_once(self, *, fast: bool = False) -> None:
        """One poll: re-read the champion marker; load the export ``current`` points to if it is new (or
        was refused and changed since); with nothing loaded and ``current`` unusable, fall back."""
        self.check_marker()
        link = self.model_dir / CURRENT
        link_id = link_identity(link)
        cur = self.current
        if link_id is not None:
            export_dir = (link.parent / link_id[0]).resolve()
            if not export_dir.is_dir():
                if cur is None:
                    self._fallback(f"current points to {link_id[0]}, which is not a folder")
            elif cur is not None and cur.export_dir == export_dir:
                if cur.fallback_reason is not None:  # current now points to the export serving as fallback
                    self.current = dataclasses.replace(cur, fallback_reason=None)
                    logger.info("version %s is current again (no longer a fallback)", cur.version)
            else:
                key = (link_id, export_identity(export_dir))
                refused = self._refused.get(str(export_dir))
                if refused is None or refused[0] != key:
                    # with nothing serving, get ready on the verified ONNX path first; scikit-learn next
                    self.try_load(export_dir, fast=fast or cur is None, key=key)
                if self.current is None:
                    _, why, version = self._refused.get(str(export_dir), (None, "not loaded", None))
                    name = f"v{version}" if version is not None else export_dir.name
                    self._fallback(f"current {name} refused: {why}", exclude=export_dir)
        if self._needs_sklearn and not fast and self.current is not None:
            self._attach_sklearn(self.current)

    def _fallback(self, reason: str, exclude: Path | None = None) -> bool:
        """Serve the best valid export on disk (``fallback_candidates``); candidates refused before are
        skipped until their files change."""
        for export_dir, manifest, why in fallback_candidates(self.model_dir, exclude, self.marker):
            key = (None, export_identity(export_dir))
            refused = self._refused.get(str(export_dir))
            if refused is not None and refused[0] == key:
                continue
            detail = f"{reason}; serving v{manifest.version} ({why})"
            if self.try_load(export_dir, fast=True, key=key, fallback_reason=detail):
                return True
        return False

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
