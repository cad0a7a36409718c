"""Shared set-up of the trainer's unit tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradeflow_shared.synth import synthetic_spec
from gradeflow_trainer.config import TrainerSettings


def unit_settings(tmp_path: Path, rows: int = 1200, **overrides: Any) -> TrainerSettings:
    """Settings on a synthetic dataset of ``rows`` rows, no search, no start-up training, and an
    MLflow address that is never called (the tests use the in-memory registry)."""
    spec = tmp_path / "synthetic.json"
    spec.write_text(synthetic_spec(rows=rows, seed=0).model_dump_json())
    base: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "admin_token": "unit-test-token-0123456789",
        "train_on_start": False,
        "inference_url": "",
        "mlflow_tracking_uri": "http://127.0.0.1:9",
        "dataset": str(spec),
        "train_search": False,
    }
    return TrainerSettings(**{**base, **overrides})
