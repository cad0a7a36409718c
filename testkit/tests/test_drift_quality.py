"""Detection quality of the drift policy (the function, no HTTP), beside Evidently's defaults.

Same windows and methods as ``python -m gradeflow_testkit.drift_quality`` (results/drift_quality.md);
fewer 100,000-row windows here to keep the runtime reasonable.
"""

from __future__ import annotations

import pytest

from gradeflow_testkit.drift_quality import equivalence, measure

REFS = (500, 5000)


@pytest.mark.parametrize("ref_rows", REFS)
def test_false_alarms_on_iid_windows(ref_rows: int) -> None:
    for n, windows in ((100, 20), (1000, 20), (10_000, 20), (100_000, 3)):
        cell = measure(ref_rows, n, windows, defaults=False)
        assert cell.ours_no_verdict == 0, "the default minimum (100 rows) gives a verdict at every size"
        assert cell.ours_alarms <= max(1, windows // 20), (ref_rows, n, cell)
        assert cell.ours_col_share <= 0.05, (ref_rows, n, cell)


@pytest.mark.parametrize("ref_rows", REFS)
@pytest.mark.parametrize("scenario", ["covariate_attendance", "new_category"])
def test_realistic_shift_detected_from_500_rows(ref_rows: int, scenario: str) -> None:
    for n, windows in ((500, 20), (1000, 20), (10_000, 5)):
        cell = measure(ref_rows, n, windows, scenario=scenario, defaults=False)
        assert cell.ours_alarms >= windows - windows // 20, (ref_rows, n, scenario, cell)


def test_defaults_fail_where_documented() -> None:
    """Evidently's defaults on the same windows: what results/drift_quality.md reports."""
    small_windows = measure(5000, 100, 20)
    assert small_windows.default_alarms >= 2  # fixed 0.1 Wasserstein below the noise of 100 rows
    assert small_windows.ours_alarms <= 1
    big_windows = measure(500, 10_000, 5)
    assert big_windows.default_col_share > 0.05  # chi-square on large windows flags the binary columns
    shift = measure(5000, 1000, 5, scenario="covariate_attendance")
    assert shift.default_alarms == 0 and shift.ours_alarms == 5  # 2 of 14 columns < the defaults' 50 %


@pytest.mark.parametrize(
    ("ref_rows", "n", "scenario"), [(500, 300, None), (5000, 600, "covariate_attendance")]
)
def test_fast_path_equals_the_evidently_report(ref_rows: int, n: int, scenario: str | None) -> None:
    diff, same_policy, same_defaults = equivalence(ref_rows, n, scenario)
    assert diff < 1e-9 and same_policy and same_defaults
