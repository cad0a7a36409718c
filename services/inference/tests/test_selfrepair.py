"""Self-repair and one truth of what is serving: fallback at start, retry of a repaired or re-pointed export,
the champion marker (``champion.json``) compared with the export served (real exports)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from gradeflow_inference.app import create_app
from gradeflow_inference.model import ModelManager
from gradeflow_shared import manifest as mf
from gradeflow_testkit import exports

from .test_api import wait_for


def _volume(tmp_path: Path, fitted: exports.Fitted, good: int = 4) -> tuple[Path, Path, bytes]:
    """v1..v<good> valid, then v<good+1> published as current with its model.onnx truncated in place.
    Returns the model dir, the broken export and the original model.onnx bytes."""
    d = tmp_path / "models"
    for v in range(1, good + 1):
        exports.republish(d, fitted.exports["rf" if v % 2 else "ridge"], v)
    broken = exports.republish(d, fitted.exports["rf"], good + 1)
    onnx = broken / mf.ONNX_FILE
    data = onnx.read_bytes()
    onnx.write_bytes(data[: len(data) // 2])
    return d, broken, data


def _marker(d: Path, version: int, run_id: str) -> None:
    mf.write_champion_marker(
        d, mf.ChampionMarker(model_name="student-grade", version=version, run_id=run_id, at=datetime.now(UTC))
    )


def test_fallback_at_start_to_newest_valid_export(tmp_path: Path, fitted: exports.Fitted) -> None:
    d, broken, _ = _volume(tmp_path, fitted)
    mgr = ModelManager(d)
    mgr.check_once(fast=True)
    cur = mgr.current
    assert cur is not None and cur.version == 4 and cur.fallback_reason is not None
    assert cur.fallback_reason.startswith("current v5 refused: onnx file")
    assert "bytes, manifest says" in cur.fallback_reason and "serving v4" in cur.fallback_reason
    assert f"no {mf.CHAMPION_FILE}" in cur.fallback_reason
    st = mgr.status()
    assert st["fallback"] is True and st["consistent"] is True and st["reason"] == cur.fallback_reason
    # the watcher's next poll does not retry the unchanged broken export, nor reload the fallback
    attempt = mgr.last_attempt
    mgr.check_once()
    assert mgr.current.version == 4 and mgr.last_attempt is attempt


def test_fallback_prefers_the_champion_of_the_marker(tmp_path: Path, fitted: exports.Fitted) -> None:
    d, _, _ = _volume(tmp_path, fitted)
    _marker(d, 3, "run-rf")  # v3 is a copy of the rf export (run id run-rf)
    mgr = ModelManager(d)
    mgr.check_once(fast=True)
    assert mgr.current is not None and mgr.current.version == 3
    assert "serving v3 (the champion of champion.json)" in (mgr.current.fallback_reason or "")
    assert mgr.status()["consistent"] is True


def test_fallback_when_the_champion_itself_is_broken(tmp_path: Path, fitted: exports.Fitted) -> None:
    d, _, _ = _volume(tmp_path, fitted)
    _marker(d, 5, "run-rf")  # the registry's champion is the broken v5: serve the newest older one, say so
    mgr = ModelManager(d)
    mgr.check_once(fast=True)
    assert mgr.current is not None and mgr.current.version == 4
    st = mgr.status()
    assert st["fallback"] is True and st["consistent"] is False
    assert any("says the champion is v5 (run run-rf)" in w for w in st["warnings"])


def test_never_falls_back_to_a_version_newer_than_the_champion(
    tmp_path: Path, fitted: exports.Fitted
) -> None:
    d, _, _ = _volume(tmp_path, fitted, good=2)
    _marker(d, 1, "run-rf")  # v2 was rolled back: not a fallback
    mgr = ModelManager(d)
    mgr.check_once(fast=True)
    assert mgr.current is not None and mgr.current.version == 1


def test_refused_export_retried_after_repair(tmp_path: Path, fitted: exports.Fitted) -> None:
    d, broken, data = _volume(tmp_path, fitted)
    mgr = ModelManager(d)
    mgr.check_once(fast=True)
    assert mgr.current is not None and mgr.current.version == 4
    (broken / mf.ONNX_FILE).write_bytes(data)  # repaired in place; the manifest is untouched
    mgr.check_once()
    assert mgr.current.version == 5 and mgr.current.fallback_reason is None
    assert mgr.status()["fallback"] is False


def test_fallback_and_marker_on_the_api(
    tmp_path: Path, fitted: exports.Fitted, make_settings: Callable[..., Any]
) -> None:
    d, broken, data = _volume(tmp_path, fitted, good=2)
    with TestClient(create_app(make_settings(d))) as c:
        r = c.get("/ready")
        assert r.status_code == 200
        j = r.json()
        assert j["model_version"] == 2 and j["fallback"] is True and j["consistent"] is True
        assert j["reason"].startswith("current v3 refused") and j["warnings"]
        m = c.get("/model").json()
        assert m["fallback"] is True and m["reason"] == j["reason"]
        assert (
            m["run_id"] == "run-ridge" and m["model_uri"] == mf.read_manifest(Path(m["export_dir"])).model_uri
        )
        assert c.post("/predict", json=fitted.records[0]).json()["model_version"] == 2
        # the registry says v1 is champion: inconsistent, surfaced on /ready, /health and /model
        _marker(d, 1, "run-rf")
        h = wait_for(lambda: (lambda j: j if j["consistent"] is False else None)(c.get("/health").json()))
        assert (h["model_version"], h["model_run_id"]) == (2, "run-ridge")
        assert (h["champion_version"], h["champion_run_id"]) == (1, "run-rf")
        r = c.get("/ready")
        assert r.status_code == 200 and r.json()["consistent"] is False
        assert any("says the champion is v1" in w for w in r.json()["warnings"])
        assert c.get("/model").json()["champion"]["version"] == 1
        # repaired current (v3, a copy of rf with run id run-rf) and a marker that names it: one truth
        (broken / mf.ONNX_FILE).write_bytes(data)
        _marker(d, 3, "run-rf")
        j = wait_for(
            lambda: (lambda j: j if j["model_version"] == 3 and j["consistent"] else None)(
                c.get("/ready").json()
            )
        )
        assert j["fallback"] is False and j["warnings"] == []
