"""The export format on the shared model volume, and its atomic publish / read.

Layout of ``MODEL_DIR``::

    MODEL_DIR/
      current -> versions/v000003-20261127T130501Z   (relative symlink, swapped atomically)
      versions/v000003-20261127T130501Z/
        manifest.json        (this module's ``Manifest``)
        model.joblib         (the fitted scikit-learn Pipeline; joblib = pickle: check sha256 first)
        model.onnx           (the same pipeline compiled with skl2onnx, verified against sklearn)
        reference.csv        (a sample of the training data with the target, for the monitor)
        reference_recent.csv (optional: the recent labelled holdout a promotion was decided on)
      history.jsonl          (one line per publish: version, dir, reason, time)

Writers build a complete version directory under ``.staging-*`` first, fsync it, rename it
into ``versions/`` and then swap ``current`` with ``os.replace`` on a new symlink. A reader
resolves ``current`` once (``resolve_current``) and reads every file from that resolved
directory, so it never mixes two exports and never sees a partial one. A writer killed at
any point leaves the previous ``current`` intact. The newest ``keep`` versions are kept.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from .errors import ExportError

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.joblib"
ONNX_FILE = "model.onnx"
REFERENCE_FILE = "reference.csv"
# the recent labelled rows a promotion was decided on (with the target): what the monitor compares the
# traffic with while the model's performance baseline comes from them
RECENT_REFERENCE_FILE = "reference_recent.csv"
CURRENT = "current"
VERSIONS = "versions"
HISTORY = "history.jsonl"
CHAMPION_FILE = "champion.json"
FORMAT_VERSION = 1
# The export contract's placeholder for a missing categorical value: the trainer's imputer fills it, the ONNX
# feed carries it for a missing string, and a reference sample may hold it for a missing value.
MISSING_CATEGORY = "__missing__"


class FeatureSpec(BaseModel):
    """One input feature of the serving model."""

    name: str
    kind: Literal["numeric", "categorical"]
    dtype: Literal["int", "float", "str", "bool"] = "float"
    categories: list[str] | None = None  # categorical: values seen in training
    min: float | None = None  # numeric: hard lower bound (requests below -> 422)
    max: float | None = None  # numeric: hard upper bound (requests above -> 422)
    train_min: float | None = None  # numeric: observed in training (informational)
    train_max: float | None = None
    nullable: bool = True  # missing values are imputed inside the pipeline
    description: str = ""


class FileEntry(BaseModel):
    path: str
    sha256: str
    bytes: int


BASE_HOLDOUT = "base_holdout"
RECENT_LABELLED = "recent_labelled"


class PerformanceBaseline(BaseModel):
    """The error the monitor judges the serving model against (``Manifest.performance_baseline``).

    After a promotion decided on the recent labelled holdout (the production rows that justified it),
    the baseline is the model's error THERE, not on the base dataset's holdout: under a lasting shift
    the window looks like that holdout, so judging it against the base test MAE would call the healed
    model degraded after every cooldown.
    """

    evaluation_set: str = Field(
        description="'recent_labelled' or 'base_holdout': where the error was measured"
    )
    mae: float
    rmse: float | None = None
    rows: int | None = Field(default=None, description="rows of that evaluation set (None: not recorded)")
    measured_at: datetime | None = Field(default=None, description="when the model was evaluated there")


def performance_baseline(
    metrics: dict[str, float],
    evaluation_set: str | None = None,
    rows: int | None = None,
    measured_at: datetime | None = None,
) -> PerformanceBaseline | None:
    """The baseline from a model's metrics (``<set>_mae`` keys; plain ``mae`` = the base holdout).

    ``evaluation_set`` None: ``recent_labelled`` when its MAE was measured, else the base holdout.
    None when the metrics hold no finite MAE for that set.
    """
    chosen = evaluation_set or (
        RECENT_LABELLED if _finite(metrics.get(f"{RECENT_LABELLED}_mae")) else BASE_HOLDOUT
    )
    if chosen == BASE_HOLDOUT:
        mae, rmse = (
            metrics.get(f"{BASE_HOLDOUT}_mae", metrics.get("mae")),
            metrics.get(f"{BASE_HOLDOUT}_rmse", metrics.get("rmse")),
        )
    else:
        mae, rmse = metrics.get(f"{chosen}_mae"), metrics.get(f"{chosen}_rmse")
    if not _finite(mae):
        return None
    assert mae is not None
    return PerformanceBaseline(
        evaluation_set=chosen,
        mae=float(mae),
        rmse=float(rmse) if _finite(rmse) and rmse is not None else None,
        rows=rows,
        measured_at=measured_at,
    )


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


class Manifest(BaseModel):
    """``manifest.json``: everything a reader needs, without MLflow."""

    format_version: int = FORMAT_VERSION
    model_name: str
    version: int
    run_id: str
    model_uri: str = ""
    dataset: str = ""
    dataset_fingerprint: str = ""
    target: str
    target_min: float | None = None
    target_max: float | None = None
    features: list[FeatureSpec]
    metrics: dict[str, float] = Field(default_factory=dict)
    files: dict[str, FileEntry] = Field(default_factory=dict)  # keys: model, onnx, reference
    onnx_max_abs_diff: float | None = None  # verified against sklearn on the reference sample
    libraries: dict[str, str] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    reason: str = ""
    # what the monitor compares the window's error with; None in exports written before it existed
    performance_baseline: PerformanceBaseline | None = None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def baseline(self) -> PerformanceBaseline | None:
        """``performance_baseline``, or (older exports) the base test error from ``metrics``."""
        return self.performance_baseline or performance_baseline(self.metrics, BASE_HOLDOUT)


class ChampionMarker(BaseModel):
    """``MODEL_DIR/champion.json``: what the registry says is champion, written by the trainer after every
    promotion, rollback and reconcile (atomically, ``write_champion_marker``). Inference compares the export
    it serves with it."""

    model_name: str
    version: int
    run_id: str
    alias: str = "champion"
    at: datetime


def read_champion_marker(model_dir: Path) -> ChampionMarker | None:
    """The champion marker of ``model_dir``; None when there is none, ExportError when it is unreadable."""
    path = Path(model_dir) / CHAMPION_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ExportError(f"unreadable {CHAMPION_FILE} in {model_dir}: {exc}") from exc
    try:
        return ChampionMarker.model_validate_json(raw)
    except ValueError as exc:
        raise ExportError(f"unreadable {CHAMPION_FILE} in {model_dir}: {exc}") from exc


def write_champion_marker(model_dir: Path, marker: ChampionMarker) -> None:
    """Write ``champion.json`` atomically (``write_file_atomic``)."""
    write_file_atomic(model_dir, CHAMPION_FILE, marker.model_dump_json(indent=2))


def write_file_atomic(model_dir: Path, name: str, text: str) -> None:
    """Write ``model_dir/name`` atomically: a temp file, fsync, ``os.replace``, fsync of the folder (a
    reader sees the old or the new content, never a mix; a crash leaves one of them)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".{name}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, model_dir / name)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(model_dir)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(directory: Path, name: str) -> FileEntry:
    p = directory / name
    return FileEntry(path=name, sha256=sha256_file(p), bytes=p.stat().st_size)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in path.iterdir():
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def resolve_current(model_dir: Path, name: str = CURRENT) -> Path | None:
    """The directory ``current`` (or the link ``name``) points to right now, or None when nothing is exported."""
    link = Path(model_dir) / name
    try:
        target = os.readlink(link)
    except (FileNotFoundError, OSError):
        return None
    resolved = (link.parent / target).resolve()
    return resolved if resolved.is_dir() else None


def read_manifest(export_dir: Path) -> Manifest:
    try:
        raw = (Path(export_dir) / MANIFEST_FILE).read_text()
        return Manifest.model_validate_json(raw)
    except FileNotFoundError as exc:
        raise ExportError(f"no {MANIFEST_FILE} in {export_dir}") from exc
    except ValueError as exc:
        raise ExportError(f"unreadable {MANIFEST_FILE} in {export_dir}: {exc}") from exc


def verify_files(export_dir: Path, manifest: Manifest, keys: tuple[str, ...] = ("model",)) -> None:
    """Check size and sha256 of the named files against the manifest (raise ExportError)."""
    for key in keys:
        entry = manifest.files.get(key)
        if entry is None:
            raise ExportError(f"manifest of version {manifest.version} lists no '{key}' file")
        path = Path(export_dir) / entry.path
        if not path.is_file():
            raise ExportError(f"{key} file {path} is missing")
        if path.stat().st_size != entry.bytes:
            raise ExportError(
                f"{key} file {path} has {path.stat().st_size} bytes, manifest says {entry.bytes}"
            )
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise ExportError(f"{key} file {path} sha256 {digest[:12]} != manifest {entry.sha256[:12]}")


def read_reference_records(
    export_dir: Path, manifest: Manifest, rows: int | None = None, key: str = "reference"
) -> list[dict[str, Any]]:
    """The reference sample's records (the first ``rows``, or all), typed per the manifest's features.

    Missing values (empty or ``MISSING_CATEGORY``) become None; the target column, when present, is kept
    as a float under its own name. Pure ``csv``: readers that must stay light (inference) use it as is,
    the monitor builds a DataFrame from it. Raises ExportError on an unreadable or empty file.
    """
    entry = manifest.files.get(key)
    name = (
        entry.path if entry is not None else (REFERENCE_FILE if key == "reference" else RECENT_REFERENCE_FILE)
    )
    out: list[dict[str, Any]] = []
    try:
        with open(Path(export_dir) / name, newline="") as fh:
            for row in csv.DictReader(fh):
                rec: dict[str, Any] = {}
                for f in manifest.features:
                    raw = row.get(f.name)
                    if raw is None:
                        raise ExportError(f"{name} has no column {f.name!r}")
                    if raw == "" or raw == MISSING_CATEGORY:
                        rec[f.name] = None
                    elif f.kind == "numeric":
                        if f.dtype == "bool":
                            rec[f.name] = raw.strip().lower() in ("1", "true", "1.0")
                        else:
                            x = float(raw)
                            rec[f.name] = int(x) if f.dtype == "int" and x.is_integer() else x
                    else:
                        rec[f.name] = raw
                target = row.get(manifest.target)
                if target is not None:
                    rec[manifest.target] = float(target) if target != "" else None
                out.append(rec)
                if rows is not None and len(out) >= rows:
                    break
    except (OSError, ValueError) as exc:
        raise ExportError(f"unreadable {name} in {export_dir}: {exc}") from exc
    if not out:
        raise ExportError(f"{name} in {export_dir} has no rows")
    return out


def read_current(model_dir: Path) -> tuple[Path, Manifest] | None:
    export_dir = resolve_current(model_dir)
    if export_dir is None:
        return None
    return export_dir, read_manifest(export_dir)


def publish(
    model_dir: Path,
    manifest: Manifest,
    write_files: Callable[[Path], None],
    keep: int = 5,
    hook: Callable[[str], None] | None = None,
    swap_current: bool = True,
) -> Path:
    """Atomically publish a new export and point ``current`` to it (``swap_current=False``: only stage
    it under ``versions/``; the caller swaps ``current`` later with ``point_current``).

    ``write_files(staging_dir)`` writes the model, onnx and reference files; this function
    fills in their checksums, writes ``manifest.json`` last, fsyncs, renames the directory
    into ``versions/`` and swaps the ``current`` symlink. ``hook(stage)`` is called between
    steps (tests use it to kill the writer mid-export).
    """
    model_dir = Path(model_dir)
    versions = model_dir / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    name = f"v{manifest.version:06d}-{stamp}"
    staging = model_dir / f".staging-{name}-{os.getpid()}"
    staging.mkdir()
    try:
        write_files(staging)
        if hook:
            hook("files-written")
        files = {}
        for key, fname in (
            ("model", MODEL_FILE),
            ("onnx", ONNX_FILE),
            ("reference", REFERENCE_FILE),
            ("reference_recent", RECENT_REFERENCE_FILE),
        ):
            if (staging / fname).exists():
                files[key] = file_entry(staging, fname)
        manifest = manifest.model_copy(update={"files": files})
        (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
        _fsync_tree(staging)
        if hook:
            hook("manifest-written")
        final = versions / name
        os.rename(staging, final)
        _fsync_dir(versions)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if hook:
        hook("renamed")
    if not swap_current:
        return final
    point_current(model_dir, final, reason=manifest.reason, version=manifest.version)
    prune(model_dir, keep=keep)
    return final


def point_link(model_dir: Path, name: str, export_dir: Path) -> str:
    """Swap the symlink ``model_dir/name`` to ``export_dir`` atomically (a new relative symlink renamed over
    the old one, then an fsync of the folder); returns the relative target."""
    model_dir = Path(model_dir)
    rel = os.path.relpath(export_dir, model_dir)
    tmp = model_dir / f".{name}-{os.getpid()}-{time.monotonic_ns()}"
    os.symlink(rel, tmp)
    os.replace(tmp, model_dir / name)
    _fsync_dir(model_dir)
    return rel


def point_current(model_dir: Path, export_dir: Path, reason: str = "", version: int | None = None) -> None:
    """Swap ``current`` to ``export_dir`` atomically (``point_link``) and note it in the history file."""
    rel = point_link(model_dir, CURRENT, export_dir)
    with open(model_dir / HISTORY, "a") as fh:
        fh.write(
            json.dumps(
                {"at": datetime.now(UTC).isoformat(), "dir": rel, "version": version, "reason": reason}
            )
            + "\n"
        )


def list_exports(model_dir: Path) -> list[Path]:
    """Complete exports (with a manifest), oldest first."""
    versions = Path(model_dir) / VERSIONS
    if not versions.is_dir():
        return []
    return sorted(p for p in versions.iterdir() if p.is_dir() and (p / MANIFEST_FILE).is_file())


def find_export(model_dir: Path, version: int) -> Path | None:
    """The newest complete export of a model version, if one is kept."""
    for p in reversed(list_exports(model_dir)):
        if p.name.startswith(f"v{version:06d}-"):
            return p
    return None


def prune(model_dir: Path, keep: int = 5) -> None:
    """Keep the newest ``keep`` exports (and the ones ``current`` and a rollout's ``candidate`` point to);
    drop stale staging dirs."""
    model_dir = Path(model_dir)
    pinned = {resolve_current(model_dir), resolve_current(model_dir, "candidate")} - {None}
    exports = list_exports(model_dir)
    for p in exports[:-keep] if keep > 0 else []:
        if p.resolve() in pinned:
            continue
        shutil.rmtree(p, ignore_errors=True)
    for p in model_dir.glob(".staging-*"):
        with contextlib.suppress(OSError):
            if time.time() - p.stat().st_mtime > 3600:
                shutil.rmtree(p, ignore_errors=True)


def library_versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            continue
    return out


def manifest_summary(m: Manifest) -> dict[str, Any]:
    return {"model_name": m.model_name, "version": m.version, "run_id": m.run_id, "metrics": m.metrics}
