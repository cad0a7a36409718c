"""A FEATURE_SOURCE=feast training against a real ``mlflow server``: the run names its feature views.

The point-in-time join itself is tested in ``services/trainer/tests/test_feature_source.py`` and,
per store backend, in ``shared/tests/test_feature_store.py``; here the lineage reaches MLflow.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from gradeflow_shared.contracts import RetrainRequest
from gradeflow_shared.procs import ServiceProcess
from gradeflow_shared.synth import synthetic_spec
from gradeflow_trainer import mlflow_io as mio
from gradeflow_trainer import service
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.registry import EXPORT_ARTIFACTS

pytestmark = pytest.mark.integration


def test_feast_training_logs_feature_views_to_mlflow(mlflow_server: ServiceProcess, tmp_path: Path) -> None:
    spec = tmp_path / "synthetic.json"
    spec.write_text(synthetic_spec(rows=400, seed=2).model_dump_json())
    settings = TrainerSettings(
        data_dir=tmp_path / "data",
        mlflow_tracking_uri=mlflow_server.url,  # type: ignore[attr-defined]
        dataset=str(spec),
        model_name=f"it-feast-{uuid.uuid4().hex[:6]}",
        train_search=False,
        inference_url="",
        admin_token="t",
        feature_source="feast",
    )
    result = service.train_once(settings, RetrainRequest(reason="feast"))
    client = mio.client(settings)
    run = client.get_run(result.run_id)
    params, tags = run.data.params, run.data.tags
    assert params["feature_source"] == "feast" and params["feature_offline_store"] == "dask"
    assert params["feature_online_store"] == "sqlite"
    versions = json.loads(tags["gradeflow.feature_views"])
    assert set(versions) == {"student_profile", "student_activity"}
    for name, version in versions.items():
        assert params[f"feature_view.{name}.version"] == version
    assert "term_grade" in params["feature_view.student_activity.features"].split(",")
    local = client.download_artifacts(result.run_id, f"{EXPORT_ARTIFACTS}/feature_views.json", str(tmp_path))
    lineage = json.loads(Path(local).read_text())
    assert {n: v["version"] for n, v in lineage["views"].items()} == versions
    assert lineage["views"]["student_activity"]["ttl_seconds"] == 35 * 24 * 3600
