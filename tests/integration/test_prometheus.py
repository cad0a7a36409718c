"""services/prometheus: the image built from Debian's package, its scrape configuration and alert rules
checked by the real promtool inside it (``check config``, ``check rules``, the rules' unit tests), and a
broken rule refused. Skips without a Docker engine (fails under REQUIRE_SERVICES=1); that the running
server scrapes the four services is checked by `make compose-test` (scripts/compose_test.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gradeflow_testkit.services import docker_problem, need

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "services" / "prometheus"
IMAGE = "gradeflow-prometheus:pytest"


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    problem = docker_problem()
    if problem:
        need(problem)
    built = subprocess.run(
        ["docker", "build", "-q", "-f", str(CONFIG / "Dockerfile"), "-t", IMAGE, "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    yield IMAGE


def promtool(image: str, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS`` in the image, with ``folder`` (read-only) as its working directory."""
    return subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "-v",
            f"{folder}:/cfg:ro",
            "-w",
            "/cfg",
            "--entrypoint",
            "promtool",
            image,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_rules_load_and_fire_as_specified(image: str) -> None:
    r = promtool(image, CONFIG, "check", "rules", "alerts.yml")
    assert r.returncode == 0 and "SUCCESS: 6 rules found" in r.stdout, r.stdout + r.stderr
    r = promtool(image, CONFIG, "test", "rules", "alerts_test.yml")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_scrape_config_is_valid_and_names_the_four_services(image: str) -> None:
    # the configuration as the image holds it (its rule_files path is the image's)
    r = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--entrypoint",
            "promtool",
            image,
            "check",
            "config",
            "/etc/prometheus/prometheus.yml",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "SUCCESS" in r.stdout + r.stderr, r.stdout + r.stderr
    text = (CONFIG / "prometheus.yml").read_text()
    for target in ("inference:8000", "trainer:8001", "monitor:8002", "mlflow:5000"):
        assert f'"{target}"' in text, target


def test_a_broken_rule_is_refused(image: str, tmp_path: Path) -> None:
    (tmp_path / "alerts.yml").write_text(
        "groups:\n  - name: broken\n    rules:\n      - alert: Broken\n        expr: rate(x[5m] > 1\n"
    )
    tmp_path.chmod(0o755)
    r = promtool(image, tmp_path, "check", "rules", "alerts.yml")
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr, r.stdout + r.stderr
