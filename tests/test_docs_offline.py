"""The API docs pages of the three FastAPI services render in a browser that can reach no host but
localhost: Swagger UI lists the operations, ReDoc shows them (no CDN needed).

Headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it) loads each page with every other
host unresolvable, runs its JavaScript, and the rendered DOM is checked: the operations appear only
once Swagger UI / ReDoc have fetched ``/openapi.json`` and drawn it, never in the page's HTML source.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gradeflow_testkit.loop import Urls
from gradeflow_testkit.services import need
from gradeflow_testkit.stack import local_stack, print_logs, stop_stack

pytestmark = pytest.mark.integration

OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"
# operation paths each service's docs must draw (the first one's summary for ReDoc)
EXPECTED = {
    "inference": ["/predict", "/feedback", "/predictions"],
    "trainer": ["/retrain", "/promote", "/rollback"],
    "monitor": ["/checks", "/drift", "/reports"],
}


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    need("headless Chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    raise AssertionError("unreachable")


def render(url: str, profile: Path) -> str:
    """The DOM of ``url`` after its scripts ran (virtual time), with every host but localhost blocked."""
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        OFFLINE,
        "--virtual-time-budget=20000",
        "--dump-dom",
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Urls]:
    chromium()  # skip before starting four services for nothing
    data = tmp_path_factory.mktemp("docs-offline")
    failed_before = request.session.testsfailed
    urls, procs = local_stack(data, {"TRAIN_ON_START": "false"})
    try:
        yield urls
    finally:
        if request.session.testsfailed > failed_before:
            print_logs(procs)
        stop_stack(procs)


def _summary(base: str, path: str) -> str:
    """The summary of the first operation on ``path`` (FastAPI always writes one)."""
    spec = httpx.get(f"{base}/openapi.json", timeout=10).json()
    return str(next(iter(spec["paths"][path].values()))["summary"])


@pytest.mark.parametrize("service", sorted(EXPECTED))
def test_swagger_ui_lists_the_operations_offline(platform: Urls, service: str, tmp_path: Path) -> None:
    base = getattr(platform, service)
    paths = EXPECTED[service]
    source = httpx.get(f"{base}/docs", timeout=10).text
    dom = render(f"{base}/docs", tmp_path / "profile")
    for path in paths:
        assert f'data-path="{path}"' not in source  # drawn by Swagger UI, not served in the page
        assert f'data-path="{path}"' in dom, f"Swagger UI of {service} did not draw {path}:\n{dom[:3000]}"


@pytest.mark.parametrize("service", sorted(EXPECTED))
def test_redoc_shows_the_operations_offline(platform: Urls, service: str, tmp_path: Path) -> None:
    base = getattr(platform, service)
    summary = _summary(base, EXPECTED[service][0])
    source = httpx.get(f"{base}/redoc", timeout=10).text
    dom = render(f"{base}/redoc", tmp_path / "profile")
    assert summary not in source
    assert summary in dom, f"ReDoc of {service} did not draw {summary!r}:\n{dom[:3000]}"
