"""The export format: atomic publish, resolve, verify, prune."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gradeflow_shared import manifest as mf
from gradeflow_shared.errors import ExportError


def _manifest(version: int) -> mf.Manifest:
    return mf.Manifest(
        model_name="m",
        version=version,
        run_id=f"run{version}",
        target="y",
        features=[mf.FeatureSpec(name="a", kind="numeric", min=0, max=10)],
        metrics={"rmse": 1.0},
    )


def _writer(payload: bytes):
    def write(d: Path) -> None:
        (d / mf.MODEL_FILE).write_bytes(payload)
        (d / mf.REFERENCE_FILE).write_text("a,y\n1,2\n")

    return write


def test_publish_then_read_current(tmp_path: Path) -> None:
    assert mf.resolve_current(tmp_path) is None
    d1 = mf.publish(tmp_path, _manifest(1), _writer(b"one"))
    cur = mf.read_current(tmp_path)
    assert cur is not None
    export_dir, m = cur
    assert export_dir == d1.resolve()
    assert m.version == 1
    assert m.files["model"].sha256 == mf.sha256_file(d1 / mf.MODEL_FILE)
    mf.verify_files(export_dir, m, ("model", "reference"))
    # the symlink is relative, so the volume can be mounted anywhere
    assert not os.readlink(tmp_path / mf.CURRENT).startswith("/")
    history = [json.loads(x) for x in (tmp_path / mf.HISTORY).read_text().splitlines()]
    assert [h["version"] for h in history] == [1]


def test_failed_publish_keeps_previous_export(tmp_path: Path) -> None:
    mf.publish(tmp_path, _manifest(1), _writer(b"one"))

    def boom(stage: str) -> None:
        if stage == "manifest-written":
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        mf.publish(tmp_path, _manifest(2), _writer(b"two"), hook=boom)
    export_dir, m = mf.read_current(tmp_path)  # type: ignore[misc]
    assert m.version == 1
    assert (export_dir / mf.MODEL_FILE).read_bytes() == b"one"
    assert not list(tmp_path.glob(".staging-*"))


def test_verify_detects_corruption(tmp_path: Path) -> None:
    d = mf.publish(tmp_path, _manifest(1), _writer(b"one"))
    m = mf.read_manifest(d)
    (d / mf.MODEL_FILE).write_bytes(b"ONE")
    with pytest.raises(ExportError, match="sha256"):
        mf.verify_files(d, m)
    (d / mf.MODEL_FILE).write_bytes(b"longer")
    with pytest.raises(ExportError, match="bytes"):
        mf.verify_files(d, m)


def test_prune_keeps_newest_and_current(tmp_path: Path) -> None:
    dirs = [mf.publish(tmp_path, _manifest(v), _writer(b"x%d" % v), keep=3) for v in range(1, 6)]
    kept = mf.list_exports(tmp_path)
    assert [p.name for p in kept] == [p.name for p in dirs[-3:]]
    # rollback to an older kept export, then more publishes must not delete the current one
    mf.point_current(tmp_path, dirs[2], reason="rollback", version=3)
    mf.publish(tmp_path, _manifest(6), _writer(b"x6"), keep=1)
    assert mf.find_export(tmp_path, 6) is not None
    assert mf.find_export(tmp_path, 3) is None  # current moved on to 6, 3 pruned


def test_find_export_and_bad_manifest(tmp_path: Path) -> None:
    d = mf.publish(tmp_path, _manifest(7), _writer(b"x"))
    assert mf.find_export(tmp_path, 7) == d
    assert mf.find_export(tmp_path, 8) is None
    (d / mf.MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ExportError, match="unreadable"):
        mf.read_manifest(d)


def test_champion_marker_roundtrip_and_errors(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    assert mf.read_champion_marker(tmp_path) is None
    at = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    mf.write_champion_marker(tmp_path, mf.ChampionMarker(model_name="m", version=3, run_id="run3", at=at))
    m = mf.read_champion_marker(tmp_path)
    assert m is not None and (m.model_name, m.version, m.run_id, m.alias, m.at) == (
        "m",
        3,
        "run3",
        "champion",
        at,
    )
    assert [p.name for p in tmp_path.iterdir()] == [mf.CHAMPION_FILE]  # no temp file left behind
    (tmp_path / mf.CHAMPION_FILE).write_text('{"version": "three"}')
    with pytest.raises(ExportError, match="unreadable champion.json"):
        mf.read_champion_marker(tmp_path)
