"""The rollout report pages: both series drawn, the decision marked, every value escaped, bad ids 404."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from gradeflow_monitor.app import create_app
from gradeflow_monitor.config import MonitorSettings
from gradeflow_monitor.rollout_pages import read_timeline, rollout_page

EVIL = "<script>alert(1)</script>"


def _timeline(directory: Path, rid: str = "abc123") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    items = [
        {
            "at": "2026-12-02T08:00:00",
            "stage": "shadow",
            "n": 40,
            "champion_mae": 2.0,
            "candidate_mae": 1.0,
            "low": 0.5,
            "high": 1.5,
            "decision": "continue",
            "reason": EVIL,
            "candidate_version": 2,
            "champion_version": 1,
        },
        {
            "at": "2026-12-02T08:01:00",
            "stage": "shadow",
            "n": 80,
            "champion_mae": 2.1,
            "candidate_mae": 0.9,
            "low": 0.9,
            "high": 1.4,
            "decision": "canary",
            "reason": "passed",
            "candidate_version": 2,
            "champion_version": 1,
        },
    ]
    (directory / f"{rid}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items) + "{torn\n")


def test_page_draws_both_models_and_the_decision(tmp_path: Path) -> None:
    _timeline(tmp_path)
    items = read_timeline(tmp_path, "abc123")
    assert items is not None and len(items) == 2  # the torn line is skipped
    html = rollout_page("abc123", items)
    assert html.count("<polyline") == 2 and "stroke-dasharray" in html and ">canary</text>" in html
    assert EVIL not in html and "&lt;script&gt;" in html
    assert read_timeline(tmp_path, "../etc/passwd") is None and read_timeline(tmp_path, "nope") is None


def test_served_with_csp_and_linked(tmp_path: Path) -> None:
    s = MonitorSettings(data_dir=tmp_path, admin_token="a" * 24, scheduler_enabled=False)
    _timeline(s.service_dir("monitor") / "rollouts")
    app = create_app(s, window=object(), trainer=object())  # type: ignore[arg-type]
    with TestClient(app) as c:
        page = c.get("/reports/rollouts/abc123")
        assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
        assert EVIL not in page.text
        index = c.get("/reports/rollouts")
        assert index.status_code == 200 and "rollouts/abc123" in index.text
        assert "reports/rollouts" in c.get("/reports").text
        assert c.get("/reports/rollouts/%3Cb%3E").status_code == 404
        assert c.get("/reports/rollouts/" + "a" * 65).status_code == 422
