"""End-to-end tests: remember a failure so that the platform fixture prints every service's log.

The platform itself comes from ``gradeflow_testkit.stack`` (local processes or ``E2E_*_URL``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        item.session.stash.setdefault("e2e_failed", True)  # type: ignore[attr-defined]
