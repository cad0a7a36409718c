"""Fixtures of the inference tests: real exports (fitted once per session), settings, an in-process client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gradeflow_testkit import exports

ADMIN_TOKEN = "admin-token-of-the-inference-tests"
LABELLER_TOKEN = "labeller-token-of-the-inference-tests"
LABELLER = {"Authorization": f"Bearer {LABELLER_TOKEN}"}


@pytest.fixture(scope="session")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> exports.Fitted:
    """Two real exports (rf v1, ridge v2) made once with the trainer's fit + export_model."""
    return exports.fit_and_export(tmp_path_factory.mktemp("inference-exports"))


@pytest.fixture
def model_dir(tmp_path: Path, fitted: exports.Fitted) -> Path:
    """A model volume whose ``current`` is a copy of the rf export as version 1."""
    d = tmp_path / "models"
    exports.republish(d, fitted.exports["rf"], 1)
    return d


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., object]:
    from gradeflow_inference.config import InferenceSettings

    def _make(model_dir: Path, **kw: object) -> InferenceSettings:
        base: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "model_dir": model_dir,
            "reload_interval": 0.1,
            "admin_token": ADMIN_TOKEN,
            "labeller_token": LABELLER_TOKEN,
        }
        base.update(kw)
        return InferenceSettings(**base)  # type: ignore[arg-type]

    return _make


@pytest.fixture
def client(model_dir: Path, make_settings: Callable[..., object]) -> Iterator[object]:
    from fastapi.testclient import TestClient

    from gradeflow_inference.app import create_app

    with TestClient(create_app(make_settings(model_dir))) as c:  # type: ignore[arg-type]
        yield c
