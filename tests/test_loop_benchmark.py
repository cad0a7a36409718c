"""Smoke test of the loop benchmark (``make loop-benchmark``): one scenario, one seed, tiny forests."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import loop_benchmark as lb
from gradeflow_trainer import pipeline as P
from gradeflow_trainer.mix import CANDIDATES


def test_one_scenario_one_seed_scores_every_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "search_space", lambda n: [("rf", {"n_estimators": 8})])
    settings = lb.settings_for_bench(tmp_path, search=False)
    scenario = next(s for s in lb.SCENARIOS if s.name == "por-school-GP-to-MS")
    results = lb.run([scenario], [0], settings, trees=8)
    (r,) = results
    assert set(r["mae"]) == set(lb.MODELS) and all(0 < v < 20 for v in r["mae"].values())
    assert r["rows"] == {"source": 423, "labelled": 136, "held_out": 90}
    assert r["mix"] in CANDIDATES
    summary = lb.summarise(results)
    assert summary[0]["best"] in lb.REFERENCES
    md = lb.report(summary, results, [0], False, 8, 1.0)
    assert "| por-school-GP-to-MS | 423 / 136 / 90 |" in md and "## Per seed" in md


def test_kaggle_scenarios_are_skipped_with_a_note_without_dataset_root(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    names = [s.name for s in lb.available(None, str(tmp_path))]
    assert "por-address-U-to-R" in names and "spf-school-public-to-private" not in names
    assert "spf-school-public-to-private skipped" in capsys.readouterr().out
