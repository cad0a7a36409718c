"""Sticky routing and the atomic rollout state of ``gradeflow_shared.rollout``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gradeflow_shared import rollout as ro


def test_routing_is_sticky_across_processes_and_close_to_the_share() -> None:
    keys = [f"student-{i}" for i in range(20_000)]
    picked = [k for k in keys if ro.to_candidate(k, 0.1)]
    assert 0.09 < len(picked) / len(keys) < 0.11
    code = "import sys; from gradeflow_shared import rollout as ro; print(sum(ro.to_candidate(f'student-{i}', 0.1) for i in range(20000)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    )
    assert int(out.stdout) == len(picked)  # not Python's salted hash: the same keys in another process


def test_raising_the_share_only_moves_keys_to_the_candidate() -> None:
    keys = [f"k{i}" for i in range(5000)]
    small = {k for k in keys if ro.to_candidate(k, 0.05)}
    big = {k for k in keys if ro.to_candidate(k, 0.3)}
    assert small <= big and not any(ro.to_candidate(k, 0.0) for k in keys)


def test_shadow_and_canary_buckets_are_independent() -> None:
    keys = [f"k{i}" for i in range(10_000)]
    both = sum(ro.bucket(k, "canary") < 0.5 and ro.bucket(k, "shadow") < 0.5 for k in keys)
    assert 0.22 < both / len(keys) < 0.28


def test_planned_stages() -> None:
    assert ro.planned_stages("shadow+canary") == ["shadow", "canary"]
    assert ro.planned_stages("canary") == ["canary"] and ro.planned_stages("direct") == []
    with pytest.raises(ValueError, match="ROLLOUT"):
        ro.planned_stages("blue-green")


def test_state_and_link_round_trip(tmp_path: Path) -> None:
    assert ro.read_state(tmp_path) is None
    (tmp_path / "versions" / "v000002-x").mkdir(parents=True)
    ro.point_candidate(tmp_path, tmp_path / "versions" / "v000002-x")
    assert ro.resolve_candidate(tmp_path) == (tmp_path / "versions" / "v000002-x").resolve()
    st = ro.RolloutState.begin("abc", "m", (1, "r1"), (2, "r2"), ["shadow"], max_age_seconds=60)
    assert st.stage == "shadow" and (st.expires_at - st.started_at).total_seconds() == 60
    ro.write_state(tmp_path, st)
    assert ro.read_state(tmp_path) == st and st.active
    assert not list(tmp_path.glob(".rollout.json-*"))  # no temp file left
    (tmp_path / ro.ROLLOUT_FILE).write_text("{torn")
    assert ro.read_state(tmp_path) is None  # unreadable: the champion serves alone
    assert ro.clear_candidate(tmp_path) and not ro.clear_candidate(tmp_path)
