"""Real exports for the inference tests: fit once with the trainer's pipeline, publish many versions.

Used by the inference tests and tests/integration/test_inference_service.py (``from gradeflow_testkit import
exports``).
The trainer is imported here only: tests may use it, the inference package never does.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradeflow_shared import manifest as mf
from gradeflow_testkit.loop import to_records


@dataclass
class Fitted:
    """Two fitted pipelines (different predictions) exported once each into a seed folder."""

    seed_dir: Path
    exports: dict[str, Path]  # "rf" / "ridge" -> a complete export directory
    records: list[dict[str, Any]]  # valid request records (JSON-ready)


def fit_and_export(root: Path, rows: int = 400) -> Fitted:

    from gradeflow_shared.synth import COLUMNS, TARGET, generate
    from gradeflow_trainer.export import export_model
    from gradeflow_trainer.pipeline import fit

    df = generate(rows, seed=0)
    names = [c.name for c in COLUMNS]
    X, y = df[names], df[TARGET]
    seed_dir = root / "seed-models"
    exports: dict[str, Path] = {}
    candidates: list[tuple[str, tuple[str, dict[str, Any]]]] = [
        ("rf", ("rf", {"n_estimators": 10, "max_depth": 6})),
        ("ridge", ("ridge", {"alpha": 1.0})),
    ]
    for i, (label, cand) in enumerate(candidates, start=1):
        res = fit(X, y, COLUMNS, search=False, candidates=[cand])
        exports[label] = export_model(
            seed_dir / label,
            res.pipeline,
            COLUMNS,
            X,
            y,
            target=TARGET,
            target_min=0.0,
            target_max=20.0,
            model_name="student-grade",
            version=i,
            run_id=f"run-{label}",
            metrics={"rmse": 1.0 + i},
            reference_rows=200,
        )
    records = to_records(generate(50, seed=1)[names])
    return Fitted(seed_dir=seed_dir, exports=exports, records=records)


def republish(
    model_dir: Path, src: Path, version: int, reason: str = "test", swap_current: bool = True
) -> Path:
    """Publish a copy of the export ``src`` as ``version`` into ``model_dir`` (real, atomic publish);
    ``swap_current=False`` stages it under versions/ with ``current`` not moved yet."""
    m = mf.read_manifest(src).model_copy(update={"version": version, "reason": reason, "files": {}})

    def write_files(staging: Path) -> None:
        for name in (mf.MODEL_FILE, mf.ONNX_FILE, mf.REFERENCE_FILE):
            shutil.copyfile(src / name, staging / name)

    return mf.publish(Path(model_dir), m, write_files, keep=50, swap_current=swap_current)


def publish_corrupt(model_dir: Path, src: Path, version: int, how: str = "sha") -> Path:
    """Publish an export that must be refused: ``sha`` (model bytes changed after hashing),
    ``onnx`` (garbage ONNX with a matching checksum) or ``manifest`` (unparseable manifest).

    The export is built and damaged in a scratch folder next to ``model_dir`` and only then moved
    into ``versions/`` and pointed to: a watching service never sees it intact (damaging it after
    ``current`` moved let a service load it in between, a valid export at that moment)."""
    model_dir = Path(model_dir)
    scratch = model_dir.parent / f".corrupt-{model_dir.name}-{version}-{os.getpid()}"
    built = republish(scratch, src, version, reason=f"corrupt-{how}")
    final = model_dir / mf.VERSIONS / built.name
    if how == "sha":
        p = built / mf.MODEL_FILE
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    elif how == "onnx":
        p = built / mf.ONNX_FILE
        p.write_bytes(b"this is not an onnx graph")
        m = json.loads((built / mf.MANIFEST_FILE).read_text())
        m["files"]["onnx"] = mf.file_entry(built, mf.ONNX_FILE).model_dump()
        (built / mf.MANIFEST_FILE).write_text(json.dumps(m))
    elif how == "manifest":
        (built / mf.MANIFEST_FILE).write_text("{not json")
    else:
        raise ValueError(how)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(built, final)
    shutil.rmtree(scratch)
    mf.point_current(model_dir, final, reason=f"corrupt-{how}", version=version)
    return final
