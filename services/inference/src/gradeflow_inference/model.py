"""Loading, verifying and running one export (plain functions; no FastAPI here).

A ``LoadedModel`` is immutable: hot reload builds a new one off the request path and swaps a
single reference (``ModelManager.current``), so a request that picked up a model keeps using
that object to the end and its answer names the version that produced it.

Predict paths: the ONNX graph through onnxruntime (one intra-op thread; ~0.05 ms for one row)
and the scikit-learn pipeline (faster for big batches on some models). A new export serves on the
ONNX path as soon as that is verified (sha256 of both files, session, a finite test prediction);
the scikit-learn path is loaded, checked against ONNX and timed against it (the crossover batch
size) afterwards, on a background thread of lower priority, and attached by a second swap. pandas
and scikit-learn are imported only for the scikit-learn path (lazily).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
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
    load: dict[str, Any] = field(default_factory=dict)  # where the load time went (GET /model -> load)
    reference: Batch | None = field(default=None, repr=False)  # the verification rows (for attach_sklearn)
    onnx_reference: tuple[float, ...] | None = field(default=None, repr=False)  # ONNX's answers on them
    model_file: tuple[int, int, int] | None = None  # identity of model.joblib when it was hashed

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
            "load": self.load,
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


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """(size, mtime_ns, inode) of a file: unchanged means the bytes hashed earlier are still the file's."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def verify_file(
    export_dir: Path, manifest: Manifest, key: str, *, keep: bool = False
) -> tuple[bytes | None, tuple[int, int, int] | None]:
    """Check size and sha256 of one file against the manifest, reading it once (raise ExportError).

    Returns the bytes (``keep``: the ONNX session is built from them, no second read) and the file's
    identity at the time it was hashed (the scikit-learn path, attached later, is loaded only while that
    identity is unchanged: no second hash)."""
    entry = manifest.files.get(key)
    if entry is None:
        raise ExportError(f"manifest of version {manifest.version} lists no '{key}' file")
    path = Path(export_dir) / entry.path
    ident = file_identity(path)
    if ident is None or not path.is_file():
        raise ExportError(f"{key} file {path} is missing")
    if ident[0] != entry.bytes:
        raise ExportError(f"{key} file {path} has {ident[0]} bytes, manifest says {entry.bytes}")
    h = hashlib.sha256()
    chunks: list[bytes] = []
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
            if keep:
                chunks.append(block)
    digest = h.hexdigest()
    if digest != entry.sha256:
        raise ExportError(f"{key} file {path} sha256 {digest[:12]} != manifest {entry.sha256[:12]}")
    if file_identity(path) != ident:
        raise ExportError(f"{key} file {path} changed while it was verified")
    return (b"".join(chunks) if keep else None), ident


def open_onnx(path: Path, data: bytes | None = None) -> tuple[Any, str]:
    """An onnxruntime session on one intra-op thread (from ``data`` when given, else from ``path``)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        sess = ort.InferenceSession(
            data if data is not None else str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
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

    The serving part first: the manifest parses; size and sha256 of model.onnx and model.joblib match
    the manifest (each read once, before anything is deserialized); the ONNX session opens and its test
    prediction on the reference sample is finite. ``with_sklearn=False`` stops there (the model can
    serve on the ONNX path: the hot-reload path; ``attach_sklearn`` adds the rest later). Otherwise, or
    without an ONNX path, ``attach_sklearn``: the pipeline loads, its test prediction is finite, ONNX and
    scikit-learn agree within ``tolerance``, and the crossover batch size is measured.

    ``LoadedModel.load`` says where the time went (ms): ``verify_ms`` (sha256), ``reference_ms``,
    ``onnx_session_ms``, ``onnx_check_ms``, ``serving_path_ms`` (all of the serving part), then
    ``sklearn_load_ms``, ``sklearn_check_ms``, ``path_timing_ms`` (crossover), ``sklearn_path_ms``.
    """
    t0 = time.perf_counter()
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    validator = RecordValidator(manifest, max_string_length)
    has_onnx = "onnx" in manifest.files and predict_path != "sklearn"
    timing: dict[str, Any] = {}

    t = time.perf_counter()
    onnx_bytes: bytes | None = None
    keys: list[str] = []
    if has_onnx:
        onnx_bytes, _ = verify_file(export_dir, manifest, "onnx", keep=True)
        keys.append("onnx")
    model_id = None
    if "model" in manifest.files or with_sklearn or not has_onnx:
        _, model_id = verify_file(export_dir, manifest, "model")
        keys.append("model")
    timing["verify_ms"] = _ms(t)

    t = time.perf_counter()
    ref = _reference_batch(validator, read_reference_records(export_dir, manifest, verify_rows))
    timing["reference_ms"] = _ms(t)
    verified: dict[str, Any] = {"sha256": keys, "reference_rows": ref.n}

    sess = out_name = None
    onnx_pred: list[float] | None = None
    if has_onnx:
        t = time.perf_counter()
        sess, out_name = open_onnx(export_dir / manifest.files["onnx"].path, onnx_bytes)
        del onnx_bytes
        timing["onnx_session_ms"] = _ms(t)
        t = time.perf_counter()
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
        timing["onnx_check_ms"] = _ms(t)
    timing["serving_path_ms"] = _ms(t0)
    verified["seconds"] = round(time.perf_counter() - t0, 3)
    model = LoadedModel(
        export_dir=export_dir,
        manifest=manifest,
        validator=validator,
        onnx=sess,
        onnx_output=out_name,
        sklearn=None,
        sklearn_threshold=math.inf if has_onnx else 0.0,
        loaded_at=datetime.now(UTC),
        verified=verified,
        load=timing,
        reference=ref,
        onnx_reference=tuple(onnx_pred) if onnx_pred is not None else None,
        model_file=model_id,
    )
    if with_sklearn or not has_onnx:
        model = attach_sklearn(model, tolerance=tolerance, predict_path=predict_path)
        model.verified["seconds"] = round(time.perf_counter() - t0, 3)
    return model


def load_pipeline(export_dir: Path, manifest: Manifest) -> Any:
    """joblib.load the pipeline: only call after its sha256 was checked (``verify_file``)."""
    import joblib

    try:
        return joblib.load(export_dir / manifest.files["model"].path)
    except Exception as exc:  # unpickling can raise anything
        raise ExportError(f"model.joblib of version {manifest.version} does not load: {exc}") from exc


def attach_sklearn(model: LoadedModel, *, tolerance: float = 0.05, predict_path: str = "auto") -> LoadedModel:
    """A copy of ``model`` with the scikit-learn path loaded, verified and timed (raise ExportError).

    model.joblib was hashed by ``load_export``; it is loaded as is while its identity (size, mtime, inode)
    is unchanged since, and hashed again first otherwise. The test prediction on the same reference rows
    must be finite and agree with the ONNX one within ``tolerance``; with ``predict_path=auto`` the two
    paths are timed (``measure_crossover``)."""
    t0 = time.perf_counter()
    manifest, export_dir = model.manifest, model.export_dir
    entry = manifest.files.get("model")
    if entry is None:
        raise ExportError(f"manifest of version {manifest.version} lists no 'model' file")
    timing: dict[str, Any] = {}
    if model.model_file is None or file_identity(export_dir / entry.path) != model.model_file:
        t = time.perf_counter()
        verify_file(export_dir, manifest, "model")
        timing["sklearn_verify_ms"] = _ms(t)
    t = time.perf_counter()
    pipeline = load_pipeline(export_dir, manifest)
    timing["sklearn_load_ms"] = _ms(t)
    ref = model.reference
    if ref is None:  # not kept: rebuild it (a LoadedModel made elsewhere)
        ref = _reference_batch(model.validator, read_reference_records(export_dir, manifest, 200))
    t = time.perf_counter()
    try:
        sk_pred = sklearn_predict(pipeline, model.validator, ref)
    except Exception as exc:  # any failure of the unpickled pipeline on valid data
        raise ExportError(
            f"model.joblib of version {manifest.version} fails on the reference sample: {exc}"
        ) from exc
    _check_finite(sk_pred, "model.joblib", manifest)
    timing["sklearn_check_ms"] = _ms(t)
    verified = dict(model.verified)
    verified["sha256"] = sorted(set(verified.get("sha256", [])) | {"model"})
    threshold = 0.0 if model.onnx is None else math.inf
    if model.onnx is not None and model.onnx_reference is not None:
        diff = max(abs(a - b) for a, b in zip(model.onnx_reference, sk_pred, strict=True))
        verified["onnx_sklearn_max_abs_diff"] = diff
        if diff > tolerance:
            raise ExportError(
                f"ONNX and scikit-learn disagree on the reference sample of version {manifest.version}: "
                f"max abs diff {diff:.4g} > tolerance {tolerance:g}"
            )
        if predict_path == "auto":
            t = time.perf_counter()
            threshold, timings = measure_crossover(
                model.onnx, model.onnx_output, pipeline, model.validator, ref
            )
            verified["crossover_ms"] = timings
            timing["path_timing_ms"] = _ms(t)
        elif predict_path == "sklearn":
            threshold = 0.0
    timing["sklearn_path_ms"] = _ms(t0)
    return dataclasses.replace(
        model, sklearn=pipeline, sklearn_threshold=threshold, verified=verified, load={**model.load, **timing}
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

    Hot reload: each poll (``interval``, default 0.2 s) costs a few stat calls; when ``current`` is
    re-pointed, the new export is verified on its ONNX path (``load_export(with_sklearn=False)``) and
    swapped in at once; the scikit-learn path is attached afterwards (``attach_sklearn``) on a background
    thread at a lower CPU priority (synchronously when no watcher runs, as in the unit tests), and
    swapped in by a second assignment if the same model still serves. ``LoadedModel.load`` records where
    the time went, including ``swap_to_serving_ms`` (from the rename of ``current``, its lstat mtime, to
    the model serving) and ``noticed_to_serving_ms``.

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
        interval: float = 0.2,
        tolerance: float = 0.05,
        verify_rows: int = 200,
        predict_path: str = "auto",
        max_string_length: int = DEFAULT_MAX_STRING_LENGTH,
        on_reload: Any = None,
        on_poll: Any = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.on_poll = on_poll  # callable() run after each poll (the rollout's candidate slot)
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
        self._pending_sklearn: LoadedModel | None = None  # served on ONNX only; scikit-learn still to attach
        self._attacher: threading.Thread | None = None
        self._background = False  # attach scikit-learn on its own thread (set by start())
        self._served_link: Any = None  # identity of the ``current`` link the served model came from

    def status(self) -> dict[str, Any]:
        return serving_status(self.current, self.marker, self.marker_error)

    # -- loading
    def try_load(
        self,
        export_dir: Path,
        *,
        fast: bool = False,
        key: Any = None,
        fallback_reason: str | None = None,
        noticed: float | None = None,
        swapped_ns: int | None = None,
    ) -> bool:
        """Load and verify the serving (ONNX) part of ``export_dir``; swap it in on success; then attach
        the scikit-learn path: in the background with the watcher running, else now unless ``fast``.
        Never raises for a bad export.

        ``key``: the identity remembered when it is refused; ``fallback_reason``: set when this export is
        served in place of the one ``current`` points to; ``noticed`` (perf_counter) and ``swapped_ns``
        (the link's mtime): for the ``noticed_to_serving_ms`` / ``swap_to_serving_ms`` of ``load``."""
        noticed = time.perf_counter() if noticed is None else noticed
        version: int | None = None
        try:
            try:
                version = read_manifest(export_dir).version
            except ExportError:
                version = None
            model = load_export(
                export_dir,
                with_sklearn=False,
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
        load = dict(model.load)
        load["noticed_to_serving_ms"] = _ms(noticed)
        now_ns = time.time_ns()
        load["serving_at"] = datetime.fromtimestamp(now_ns / 1e9, UTC).isoformat()
        if swapped_ns is not None:
            load["swapped_at"] = datetime.fromtimestamp(swapped_ns / 1e9, UTC).isoformat()
            load["swap_to_serving_ms"] = round(max(0.0, (now_ns - swapped_ns) / 1e6), 1)
        model = dataclasses.replace(model, load=load, fallback_reason=fallback_reason)
        old = self.current
        self.current = model  # the swap: one reference assignment
        self._refused.pop(str(export_dir), None)
        needs = model.sklearn is None and model.onnx is not None and self.predict_path != "onnx"
        self._pending_sklearn = model if needs else None
        self.last_attempt = ReloadAttempt(datetime.now(UTC), str(export_dir), model.version, True)
        logger.log(
            logging.WARNING if fallback_reason else logging.INFO,
            "serving model %s version %s from %s (was %s; ONNX path verified in %.0f ms, swap to serving "
            "%s ms)%s",
            model.manifest.model_name,
            model.version,
            export_dir,
            old.version if old else None,
            load.get("serving_path_ms", 0.0),
            load.get("swap_to_serving_ms", "?"),
            f" as a FALLBACK: {fallback_reason}" if fallback_reason else "",
        )
        if self.on_reload:
            self.on_reload(True)
        if not fast:
            self._schedule_sklearn()
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
        was refused and changed since); with nothing loaded and ``current`` unusable, fall back.

        While the served model came from the very link ``current`` is (same target, inode and mtime), a
        poll is two stat calls. ``fast``: leave the scikit-learn path for a later poll."""
        try:
            self._check_current(fast)
        finally:
            if self.on_poll is not None and not fast:  # not in the start-up poll: the candidate waits
                self.on_poll()

    def _check_current(self, fast: bool) -> None:
        self.check_marker()
        link = self.model_dir / CURRENT
        link_id = link_identity(link)
        cur = self.current
        if link_id is not None and cur is not None and link_id == self._served_link:
            self._schedule_sklearn(fast)
            return
        noticed = time.perf_counter()
        if link_id is not None:
            export_dir = (link.parent / link_id[0]).resolve()
            if not export_dir.is_dir():
                if cur is None:
                    self._fallback(f"current points to {link_id[0]}, which is not a folder")
            elif cur is not None and cur.export_dir == export_dir:
                if cur.fallback_reason is not None:  # current now points to the export serving as fallback
                    self.current = dataclasses.replace(cur, fallback_reason=None)
                    if self._pending_sklearn is cur:
                        self._pending_sklearn = self.current
                    logger.info("version %s is current again (no longer a fallback)", cur.version)
                self._served_link = link_id
            else:
                key = (link_id, export_identity(export_dir))
                refused = self._refused.get(str(export_dir))
                if (refused is None or refused[0] != key) and self.try_load(
                    export_dir, fast=True, key=key, noticed=noticed, swapped_ns=link_id[2]
                ):
                    self._served_link = link_id
                if self.current is None:
                    _, why, version = self._refused.get(str(export_dir), (None, "not loaded", None))
                    name = f"v{version}" if version is not None else export_dir.name
                    self._fallback(f"current {name} refused: {why}", exclude=export_dir)
        self._schedule_sklearn(fast)

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
                self._served_link = None
                return True
        return False

    def _schedule_sklearn(self, fast: bool = False) -> None:
        """Attach the scikit-learn path of the model served on ONNX only: on the attach thread when the
        watcher runs (one at a time; a newer model waits for the next poll), else now unless ``fast``."""
        pending = self._pending_sklearn
        if pending is None or pending is not self.current:
            return
        if self._background:
            if self._attacher is None or not self._attacher.is_alive():
                self._attacher = threading.Thread(
                    target=self._attach_sklearn, args=(pending, True), name="sklearn-attach", daemon=True
                )
                self._attacher.start()
        elif not fast:
            self._attach_sklearn(pending)

    def _attach_sklearn(self, cur: LoadedModel, background: bool = False) -> None:
        if background:
            _lower_priority()
        if self._pending_sklearn is cur:
            self._pending_sklearn = None
        try:
            full = attach_sklearn(cur, tolerance=self.tolerance, predict_path=self.predict_path)
        except Exception as exc:  # noqa: BLE001 - keep serving the verified ONNX path
            logger.error(
                "scikit-learn path of version %s not verified (%s); serving ONNX only", cur.version, exc
            )
            self.last_attempt = ReloadAttempt(
                datetime.now(UTC), str(cur.export_dir), cur.version, False, f"sklearn path refused: {exc}"
            )
            return
        if self.current is cur:
            serving_at = cur.load.get("serving_at")
            load = dict(full.load)
            if serving_at:
                since = datetime.now(UTC) - datetime.fromisoformat(serving_at)
                load["sklearn_ready_after_serving_ms"] = round(since.total_seconds() * 1000, 1)
            self.current = dataclasses.replace(full, load=load)
            logger.info(
                "version %s: scikit-learn path verified and attached (%s)",
                cur.version,
                {k: v for k, v in load.items() if k.startswith(("sklearn", "path"))},
            )

    # -- watcher
    def start(self) -> None:
        self._background = True
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
        if self._attacher is not None:
            self._attacher.join(timeout=30)


def _lower_priority() -> None:
    """Give the calling thread a nice value of 10 (Linux: per thread), so that loading and timing the
    scikit-learn path yields the CPU to requests and to a training job; elsewhere a no-op."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
