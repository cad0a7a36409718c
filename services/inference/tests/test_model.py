"""Loading and verifying exports, and the manager's refuse-and-keep-serving behaviour (real exports)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from gradeflow_inference.model import (
    LoadedModel,
    ModelManager,
    _reference_batch,
    load_export,
    measure_crossover,
)
from gradeflow_inference.schema import Batch
from gradeflow_shared.errors import ExportError
from gradeflow_shared.manifest import MODEL_FILE, point_current
from gradeflow_testkit import exports


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
    bad = exports.publish_corrupt(d, fitted.exports["ridge"], 2, how="sha")
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
    # the same version promoted again (current re-pointed to the same folder): retried, refused again
    time.sleep(0.01)
    point_current(d, bad, version=2)
    mgr.check_once()
    again = mgr.last_attempt
    assert again is not first and again is not None and again.version == 2 and not again.ok
    assert mgr.current is good
    # the model file repaired (replaced by rename; the manifest untouched): retried and served
    tmp = bad / ".repair"
    tmp.write_bytes((fitted.exports["ridge"] / MODEL_FILE).read_bytes())
    os.replace(tmp, bad / MODEL_FILE)
    mgr.check_once()
    assert mgr.current.version == 2 and mgr.current.fallback_reason is None
    # a good export afterwards is taken; pointing back to the old directory (rollback) works too
    new = exports.republish(d, fitted.exports["ridge"], 3)
    mgr.check_once()
    assert mgr.current.version == 3 and mgr.current.export_dir == new.resolve()
    point_current(d, good.export_dir)
    mgr.check_once()
    assert mgr.current.version == 1


class _SlowOnnx:
    """An onnxruntime session that is `extra` seconds slower on its first `first` calls with `rows` rows."""

    def __init__(self, sess: object, rows: int, extra: float, first: int) -> None:
        self.sess, self.rows, self.extra, self.left = sess, rows, extra, first

    def run(self, names: list[str], feed: dict[str, object]) -> object:
        if len(next(iter(feed.values()))) == self.rows and self.left > 0:  # type: ignore[arg-type]
            self.left -= 1
            time.sleep(self.extra)
        return self.sess.run(names, feed)  # type: ignore[attr-defined]


def _ref(m: LoadedModel, fitted: exports.Fitted) -> Batch:
    return _reference_batch(m.validator, fitted.records[:50])


def test_crossover_not_fooled_by_a_load_burst(fitted: exports.Fitted) -> None:
    """A burst of load while the ONNX path is timed at 1000 rows must not hand 1000-row batches to the
    (slower) scikit-learn path for good: the paths take turns, and the best time of each counts."""
    m = load_export(fitted.exports["rf"])
    burst = _SlowOnnx(m.onnx, rows=1000, extra=0.25, first=3)
    threshold, timings = measure_crossover(burst, m.onnx_output, m.sklearn, m.validator, _ref(m, fitted))
    assert burst.left == 0  # the burst did hit the measurement
    assert math.isinf(threshold), timings
    assert timings["1000"]["onnx"] < 250, timings


def test_crossover_picks_sklearn_when_onnx_is_slower(fitted: exports.Fitted) -> None:
    m = load_export(fitted.exports["rf"])
    slow = _SlowOnnx(m.onnx, rows=100, extra=0.25, first=10**6)  # always slow at 100 rows
    threshold, timings = measure_crossover(slow, m.onnx_output, m.sklearn, m.validator, _ref(m, fitted))
    assert threshold == 100.0, timings


def test_reload_serves_onnx_first_then_attaches_sklearn_with_a_load_breakdown(
    tmp_path: Path, fitted: exports.Fitted
) -> None:
    d = tmp_path / "m"
    exports.republish(d, fitted.exports["rf"], 1)
    mgr = ModelManager(d)
    mgr.check_once()
    v1 = mgr.current
    assert v1 is not None and v1.sklearn is not None
    exports.republish(d, fitted.exports["ridge"], 2)
    mgr.check_once(fast=True)  # the swap: the ONNX path only, scikit-learn left for the next poll
    cur = mgr.current
    assert cur is not None and cur.version == 2 and cur.sklearn is None and cur.path_for(10_000) == "onnx"
    load = cur.info()["load"]
    for key in ("verify_ms", "reference_ms", "onnx_session_ms", "onnx_check_ms", "serving_path_ms"):
        assert load[key] >= 0, load
    assert load["serving_path_ms"] <= load["noticed_to_serving_ms"]
    assert 0 <= load["swap_to_serving_ms"] < 60_000 and "path_timing_ms" not in load
    assert cur.verified["sha256"] == ["onnx", "model"]  # both files hashed before serving
    mgr.check_once()  # the same link: the poll only attaches the scikit-learn path
    full = mgr.current
    assert full is not cur and full.version == 2 and full.sklearn is not None
    assert full.load["path_timing_ms"] > 0 and full.load["sklearn_load_ms"] > 0
    assert "sklearn_verify_ms" not in full.load  # model.joblib unchanged since hashed: not hashed again
    assert full.load["serving_path_ms"] == load["serving_path_ms"]
    assert set(full.verified["crossover_ms"]) == {"1", "100", "1000"}


def test_sklearn_disagreement_after_the_swap_keeps_serving_onnx(
    tmp_path: Path, fitted: exports.Fitted
) -> None:
    d = tmp_path / "m"
    exports.republish(d, fitted.exports["rf"], 1)
    mgr = ModelManager(d, tolerance=1e-12)  # ONNX (float32) and scikit-learn never agree this closely
    mgr.check_once(fast=True)
    assert mgr.current is not None and mgr.current.version == 1
    mgr.check_once()
    assert mgr.current.version == 1 and mgr.current.sklearn is None and mgr.current.onnx is not None
    attempt = mgr.last_attempt
    assert attempt is not None and not attempt.ok and "sklearn path refused" in (attempt.error or "")
