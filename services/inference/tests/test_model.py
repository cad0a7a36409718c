"""Loading and verifying exports, and the manager's refuse-and-keep-serving behaviour (real exports)."""

from __future__ import annotations

from pathlib import Path

import gf_inference_test_exports as exports  # registered by conftest.py
import pytest

from gradeflow_inference.model import ModelManager, load_export
from gradeflow_shared.errors import ExportError
from gradeflow_shared.manifest import point_current


def test_load_export_verifies_both_paths(fitted: exports.Fitted) -> None:
    m = load_export(fitted.exports["rf"])
    assert m.version == 1 and m.onnx is not None and m.sklearn is not None
    assert m.verified["onnx_sklearn_max_abs_diff"] < 1e-3
    assert set(m.verified["sha256"]) == {"onnx", "model"}
    b = m.validator.validate(fitted.records[:5], batch=True)
    onnx = m.predict(b, "onnx")
    sk = m.predict(b, "sklearn")
    assert max(abs(a - c) for a, c in zip(onnx, sk, strict=True)) < 1e-3


def test_fast_load_skips_sklearn(fitted: exports.Fitted) -> None:
    m = load_export(fitted.exports["ridge"], with_sklearn=False)
    assert m.sklearn is None and m.path_for(10_000) == "onnx"


@pytest.mark.parametrize("how", ["sha", "onnx", "manifest"])
def test_corrupt_exports_refused(tmp_path: Path, fitted: exports.Fitted, how: str) -> None:
    bad = exports.publish_corrupt(tmp_path / "m", fitted.exports["rf"], 5, how=how)
    with pytest.raises(ExportError):
        load_export(bad)


def test_disagreeing_paths_refused(fitted: exports.Fitted) -> None:
    with pytest.raises(ExportError, match="disagree"):
        load_export(fitted.exports["rf"], tolerance=1e-12)


def test_manager_keeps_old_model_on_bad_export(tmp_path: Path, fitted: exports.Fitted) -> None:
    d = tmp_path / "m"
    exports.republish(d, fitted.exports["rf"], 1)
    mgr = ModelManager(d)
    mgr.check_once()
    assert mgr.current is not None and mgr.current.version == 1
    good = mgr.current
    exports.publish_corrupt(d, fitted.exports["ridge"], 2, how="sha")
    mgr.check_once()
    assert mgr.current is good
    assert (
        mgr.last_attempt is not None
        and not mgr.last_attempt.ok
        and "sha256" in (mgr.last_attempt.error or "")
    )
    # refused once, not retried in a loop
    first = mgr.last_attempt
    mgr.check_once()
    assert mgr.last_attempt is first
    # a good export afterwards is taken; pointing back to the old directory (rollback) works too
    new = exports.republish(d, fitted.exports["ridge"], 3)
    mgr.check_once()
    assert mgr.current.version == 3 and mgr.current.export_dir == new.resolve()
    point_current(d, good.export_dir)
    mgr.check_once()
    assert mgr.current.version == 1
