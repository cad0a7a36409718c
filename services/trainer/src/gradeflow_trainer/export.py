"""Export a fitted pipeline to the shared model volume (atomic, verified).

``export_model`` compiles the pipeline to ONNX, refuses the export when ONNX and sklearn
disagree, writes ``model.joblib``, ``model.onnx`` and ``reference.csv`` into a staging
directory and publishes it with ``gradeflow_shared.manifest.publish`` (rename + symlink
swap). ``load_export`` reads an export back, checking sha256 before ``joblib.load``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
from sklearn.pipeline import Pipeline

from gradeflow_shared import manifest as mf
from gradeflow_shared.datasets import ColumnSpec, feature_specs
from gradeflow_shared.errors import ExportError

from .pipeline import compile_onnx, prepare_frame

logger = logging.getLogger(__name__)

LIBRARIES = ("scikit-learn", "onnxruntime", "skl2onnx", "numpy", "pandas")


def reference_sample(X: pd.DataFrame, y: pd.Series, target: str, rows: int, seed: int = 0) -> pd.DataFrame:
    """A random sample of the training rows, with the target column appended."""
    ref = X.reset_index(drop=True).copy()
    ref[target] = pd.Series(y).reset_index(drop=True).to_numpy()
    if rows and len(ref) > rows:
        ref = ref.sample(n=rows, random_state=seed).sort_index()
    return ref.reset_index(drop=True)


def export_model(
    model_dir: Path,
    pipeline: Pipeline,
    columns: Sequence[ColumnSpec],
    X_ref: pd.DataFrame,
    y_ref: pd.Series,
    *,
    target: str,
    model_name: str,
    version: int,
    run_id: str,
    metrics: dict[str, float],
    dataset: str = "",
    fingerprint: str = "",
    reason: str = "",
    reference_rows: int = 2000,
    keep: int = 5,
    hook: Callable[[str], None] | None = None,
    target_min: float | None = None,
    target_max: float | None = None,
    model_uri: str = "",
    swap_current: bool = True,
    performance_baseline: mf.PerformanceBaseline | None = None,
    recent_reference: pd.DataFrame | None = None,
) -> Path:
    """Compile, verify and atomically publish an export; returns the new version directory.

    ``performance_baseline`` is what the monitor judges the model against; None: derived from
    ``metrics`` (the recent labelled holdout's error when measured, else the base test error).
    ``recent_reference``: the recent labelled rows (features + target) that baseline was measured on,
    written as ``reference_recent.csv`` (the monitor's drift reference while that baseline holds).

    ``swap_current=False`` stages it under ``versions/`` only (the promotion transaction swaps
    ``current`` after the registry's alias moved). Raises ExportError (and leaves ``current``
    untouched) when ONNX does not agree with sklearn.
    """
    columns = list(columns)
    X_ref = prepare_frame(X_ref, columns)
    ref = reference_sample(X_ref, y_ref, target, reference_rows)
    X_check = ref[[c.name for c in columns]]
    onnx_bytes, diff = compile_onnx(pipeline, columns, X_check)
    if hook:
        hook("onnx-verified")
    manifest = mf.Manifest(
        model_name=model_name,
        version=version,
        run_id=run_id,
        model_uri=model_uri,
        dataset=dataset,
        dataset_fingerprint=fingerprint,
        target=target,
        target_min=target_min,
        target_max=target_max,
        features=feature_specs(columns, X_ref),
        metrics={k: float(v) for k, v in metrics.items()},
        onnx_max_abs_diff=diff,
        libraries=mf.library_versions(*LIBRARIES),
        reason=reason,
        performance_baseline=performance_baseline
        or mf.performance_baseline(metrics, measured_at=datetime.now(UTC)),
    )

    def write_files(staging: Path) -> None:
        joblib.dump(pipeline, staging / mf.MODEL_FILE)
        if hook:
            hook("model-written")
        (staging / mf.ONNX_FILE).write_bytes(onnx_bytes)
        ref.to_csv(staging / mf.REFERENCE_FILE, index=False)
        if recent_reference is not None and len(recent_reference):
            recent = prepare_frame(recent_reference, columns)
            recent[target] = recent_reference[target].to_numpy()
            recent.to_csv(staging / mf.RECENT_REFERENCE_FILE, index=False)

    final = mf.publish(model_dir, manifest, write_files, keep=keep, hook=hook, swap_current=swap_current)
    logger.info("exported %s v%d to %s (onnx max diff %.2e)", model_name, version, final, diff)
    return final


def load_export(export_dir: Path) -> tuple[mf.Manifest, Any]:
    """``(manifest, fitted pipeline)`` of an export directory, or of ``MODEL_DIR`` (its ``current``).

    The model file's size and sha256 are checked against the manifest BEFORE ``joblib.load``.
    """
    export_dir = Path(export_dir)
    if not (export_dir / mf.MANIFEST_FILE).exists():
        current = mf.resolve_current(export_dir)
        if current is None:
            raise ExportError(f"no export in {export_dir}")
        export_dir = current
    manifest = mf.read_manifest(export_dir)
    mf.verify_files(export_dir, manifest, keys=("model",))
    try:
        pipe = joblib.load(export_dir / manifest.files["model"].path)
    except Exception as exc:  # unpickling can fail in many ways; all mean "unloadable"
        raise ExportError(f"cannot load model of version {manifest.version}: {exc}") from exc
    return manifest, pipe


def kept_export(model_dir: Path, version: int, run_id: str) -> Path | None:
    """The newest kept export of ``version`` made from run ``run_id`` (a version number alone may name
    another run after the registry was replaced), or None."""
    for p in reversed(mf.list_exports(model_dir)):
        if not p.name.startswith(f"v{version:06d}-"):
            continue
        try:
            if mf.read_manifest(p).run_id == run_id:
                return p
        except ExportError:
            continue
    return None
