"""Fixtures of the monitor tests: a real inference-like and a real trainer-like HTTP server (uvicorn
threads on free ports) that speak the platform contracts, and a real export on a temporary MODEL_DIR."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gradeflow_shared import synth
from gradeflow_testkit.monitor_peers import ADMIN_TOKEN, FakeInference, FakeTrainer
from gradeflow_testkit.servers import ThreadServer


@pytest.fixture
def fake_inference() -> Iterator[tuple[FakeInference, ThreadServer]]:
    inf = FakeInference()
    with ThreadServer(inf.app) as srv:
        yield inf, srv


@pytest.fixture
def fake_trainer() -> Iterator[tuple[FakeTrainer, ThreadServer]]:
    tr = FakeTrainer(ADMIN_TOKEN)
    with ThreadServer(tr.app) as srv:
        yield tr, srv


@pytest.fixture(scope="session")
def real_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A real export by the trainer's export_model (ridge pipeline fitted on synthetic data)."""
    from gradeflow_trainer import export as tx
    from gradeflow_trainer.pipeline import build_pipeline, evaluate

    model_dir = tmp_path_factory.mktemp("models")
    df = synth.generate(1500, seed=3)
    X, y = df[synth.FEATURES], df[synth.TARGET]
    pipe = build_pipeline(synth.COLUMNS, "ridge", {"alpha": 1.0})
    pipe.fit(X.iloc[:1200], y.iloc[:1200])
    metrics = evaluate(pipe, X.iloc[1200:], y.iloc[1200:])
    tx.export_model(
        model_dir,
        pipe,
        synth.COLUMNS,
        X.iloc[:1200],
        y.iloc[:1200],
        target=synth.TARGET,
        model_name="student-grade",
        version=1,
        run_id="r1",
        metrics=metrics,
        reference_rows=1000,
    )
    return model_dir, pipe
