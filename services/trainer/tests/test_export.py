"""Export to the shared model volume: verified, atomic, refuses mismatches, survives SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from gradeflow_shared import manifest as mf
from gradeflow_shared import synth
from gradeflow_shared.datasets import fingerprint, load_dataset
from gradeflow_shared.errors import ExportError
from gradeflow_trainer import pipeline as P
from gradeflow_trainer.export import export_model, load_export


@pytest.fixture(scope="module")
def trained() -> tuple:
    X, y, cols = load_dataset(synth.synthetic_spec(rows=800, seed=1))
    res = P.fit(X, y, cols, search=False, candidates=[("gbr", {"n_estimators": 40, "max_depth": 3})])
    return res.pipeline, X, y, cols


def _export(model_dir: Path, trained: tuple, version: int, **kw: object) -> Path:
    pipe, X, y, cols = trained
    return export_model(
        model_dir,
        pipe,
        cols,
        X,
        y,
        target=synth.TARGET,
        model_name="student-grade",
        version=version,
        run_id=f"run{version}",
        metrics={"rmse": 1.0, "mae": 0.8},
        dataset="synthetic",
        fingerprint=fingerprint(X),
        reason="test",
        reference_rows=300,
        **kw,
    )  # type: ignore[arg-type]


def test_export_writes_a_complete_verified_version(tmp_path: Path, trained: tuple) -> None:
    pipe, X, y, cols = trained
    out = _export(tmp_path, trained, 1, target_min=0.0, target_max=20.0)
    assert mf.resolve_current(tmp_path) == out.resolve()
    for name in (mf.MANIFEST_FILE, mf.MODEL_FILE, mf.ONNX_FILE, mf.REFERENCE_FILE):
        assert (out / name).is_file(), name
    m = json.loads((out / mf.MANIFEST_FILE).read_text())
    assert m["version"] == 1 and m["run_id"] == "run1" and m["target"] == synth.TARGET
    assert m["onnx_max_abs_diff"] < 1e-3 and set(m["files"]) == {"model", "onnx", "reference"}
    assert {"scikit-learn", "onnxruntime", "skl2onnx", "numpy", "pandas"} <= set(m["libraries"])
    feats = {f["name"]: f for f in m["features"]}
    assert list(feats) == [c.name for c in cols]
    assert feats["attendance_pct"]["max"] == 100 and feats["attendance_pct"]["train_max"] <= 100
    assert feats["school_type"]["categories"] == ["private", "public"]
    ref = pd.read_csv(out / mf.REFERENCE_FILE)
    assert len(ref) == 300 and list(ref.columns) == [*[c.name for c in cols], synth.TARGET]
    manifest, loaded = load_export(tmp_path)  # MODEL_DIR or the version dir both work
    assert manifest.version == 1
    np.testing.assert_allclose(
        loaded.predict(P.prepare_frame(X.iloc[:50], cols)), pipe.predict(P.prepare_frame(X.iloc[:50], cols))
    )


def test_load_export_refuses_a_tampered_model(tmp_path: Path, trained: tuple) -> None:
    out = _export(tmp_path, trained, 1)
    with open(out / mf.MODEL_FILE, "r+b") as fh:  # same size, different bytes
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ExportError, match="sha256"):
        load_export(out)


@pytest.mark.parametrize("stage", ["onnx-verified", "model-written", "files-written", "manifest-written"])
def test_failure_mid_export_keeps_previous_current(tmp_path: Path, trained: tuple, stage: str) -> None:
    first = _export(tmp_path, trained, 1)

    def boom(s: str) -> None:
        if s == stage:
            raise RuntimeError(f"crash at {s}")

    with pytest.raises(RuntimeError, match="crash at"):
        _export(tmp_path, trained, 2, hook=boom)
    assert mf.resolve_current(tmp_path) == first.resolve()
    manifest, _ = load_export(tmp_path)
    assert manifest.version == 1
    assert [p.name for p in mf.list_exports(tmp_path)] == [first.name]
    assert not list(tmp_path.glob(".staging-*"))


def test_onnx_mismatch_refuses_the_export(
    tmp_path: Path, trained: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _export(tmp_path, trained, 1)
    monkeypatch.setattr(P, "ONNX_TOLERANCE", 0.0)
    with pytest.raises(ExportError, match="differ"):
        _export(tmp_path, trained, 2)
    assert mf.resolve_current(tmp_path) == first.resolve()
    assert len(mf.list_exports(tmp_path)) == 1


def test_keep_prunes_old_versions(tmp_path: Path, trained: tuple) -> None:
    for v in (1, 2, 3):
        last = _export(tmp_path, trained, v, keep=2)
    names = [p.name for p in mf.list_exports(tmp_path)]
    assert len(names) == 2 and names[-1] == last.name and names[0].startswith("v000002-")


CHILD = textwrap.dedent(
    """
    import sys, time, joblib
    from pathlib import Path
    from gradeflow_trainer.export import export_model

    pipe, X, y, cols = joblib.load(sys.argv[1])

    def hook(stage):
        if stage == sys.argv[3]:
            print("AT", stage, flush=True)
            time.sleep(60)

    export_model(Path(sys.argv[2]), pipe, cols, X, y, target="final_grade", model_name="m", version=2,
                 run_id="child", metrics={}, reference_rows=100, hook=hook)
    """
)


@pytest.mark.parametrize("stage", ["files-written", "renamed"])
def test_sigkill_mid_export_leaves_current_loadable(tmp_path: Path, trained: tuple, stage: str) -> None:
    model_dir = tmp_path / "models"
    first = _export(model_dir, trained, 1)
    blob = tmp_path / "trained.joblib"
    joblib.dump(trained, blob)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(blob), str(model_dir), stage],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline and not line:
            line = proc.stdout.readline() if proc.stdout else ""
            if proc.poll() is not None and not line:
                break
        assert line.startswith("AT"), (
            f"child never reached {stage}: {proc.stderr.read() if proc.stderr else ''}"
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # the reader still sees version 1 and can load and verify it
    assert mf.resolve_current(model_dir) == first.resolve()
    manifest, pipe = load_export(model_dir)
    assert manifest.version == 1 and pipe is not None
    # and a later export still works despite the debris (staging dir or orphan version)
    nxt = _export(model_dir, trained, 3)
    assert mf.resolve_current(model_dir) == nxt.resolve()
    assert load_export(model_dir)[0].version == 3
