"""The gate's evidence through the real flow: a real ``mlflow server``, the trainer app in-process
(``POST /retrain`` -> ``GET /jobs/{id}``), labelled production rows handed to the retrain.

Too few recent labelled rows keep the champion and the job result, the version's tags and the run's
``gate/decision.json`` say how many more labels are needed; enough rows of a clear gain promote,
with the effect, its interval and both populations' errors recorded in the same three places. The next
gate judges that champion, refitted on the base holdout, there by its error recorded before the refit."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gradeflow_shared.contracts import RetrainRequest
from gradeflow_shared.procs import ServiceProcess
from gradeflow_shared.synth import COLUMNS, TARGET, generate, synthetic_spec
from gradeflow_trainer import gate, service
from gradeflow_trainer import mlflow_io as mio
from gradeflow_trainer import pipeline as P
from gradeflow_trainer.app import create_app
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.jobs import JobRunner
from gradeflow_trainer.labelled import LabelledRows

pytestmark = pytest.mark.integration
FAST = ("gbr", {"n_estimators": 60, "learning_rate": 0.1, "max_depth": 3})  # one small model: seconds
TOKEN = "gate-evidence-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def env(mlflow_server: ServiceProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    mp = pytest.MonkeyPatch()
    mp.setattr(service, "fit", functools.partial(P.fit, candidates=[FAST]))
    tmp = tmp_path_factory.mktemp("gate-evidence")
    spec = tmp / "synthetic.json"
    spec.write_text(synthetic_spec(rows=1200, seed=0).model_dump_json())
    settings = TrainerSettings(
        data_dir=tmp / "data",
        mlflow_tracking_uri=mlflow_server.url,  # type: ignore[attr-defined]
        dataset=str(spec),
        model_name=f"it-gate-{uuid.uuid4().hex[:6]}",
        train_search=False,
        inference_url="",
        admin_token=TOKEN,
        train_on_start=False,
        gate_min_rows=100,
        production_holdout=0.3,
    )
    first = service.train_once(settings, RetrainRequest(reason="first"))
    yield SimpleNamespace(settings=settings, first=first, client=mio.client(settings), tmp=tmp)
    mp.undo()


def labelled(n: int, seed: int) -> LabelledRows:
    df = generate(n, seed=seed, scenario="concept_study_hours")
    return LabelledRows(P.prepare_frame(df, COLUMNS), df[TARGET].astype(float), {})


def retrain_job(env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, rows: LabelledRows) -> dict[str, Any]:
    monkeypatch.setattr(service, "pull_labelled", lambda *a, **k: rows)
    with TestClient(create_app(env.settings)) as c:
        r = c.post("/retrain", json={"reason": "drift"}, headers=AUTH)
        assert r.status_code in (200, 202), r.text
        runner: JobRunner = c.app.state.runner  # type: ignore[attr-defined]
        runner.wait(r.json()["id"], 300)
        job = c.get(f"/jobs/{r.json()['id']}").json()
    assert job["state"] == "succeeded", job
    return job  # type: ignore[no-any-return]


def recorded(
    env: SimpleNamespace, version: int, run_id: str, tmp: Path
) -> tuple[dict[str, str], dict[str, Any]]:
    """The version's tags and the run's logged decision, read back from the MLflow server."""
    tags = dict(env.client.get_model_version(env.settings.model_name, str(version)).tags)
    path = env.client.download_artifacts(run_id, "gate/decision.json", str(tmp))
    return tags, json.loads(Path(path).read_text())


def test_first_model_is_judged_by_the_margin_rule(env: SimpleNamespace) -> None:
    d = env.first.decision
    assert d.promoted and d.method == "margin" and d.rows is None and d.labels_needed is None


def test_too_few_recent_rows_keep_the_champion_and_say_how_many_labels(
    env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    job = retrain_job(env, monkeypatch, labelled(200, seed=11))  # 60 recent rows held out (30 %)
    res = job["result"]
    d = res["decision"]
    assert res["rows"]["production_holdout"] == 60 and not d["promoted"] and d["champion_version"] == 1
    assert d["method"] == "paired-bootstrap" and d["rows"] == 60 and d["min_rows"] == 100
    assert d["labels_needed"] == 134 and "needs 134 more labelled rows" in d["reason"], d[
        "reason"
    ]  # 40 / 0.3
    assert d["effect_low"] <= d["effect"] <= d["effect_high"] and d["confidence"] == 0.95
    assert set(d["errors"]) == {"base_holdout", "recent_labelled"}
    tags, logged = recorded(env, res["version"], res["run_id"], tmp_path)
    assert (
        tags["gate.promoted"] == "false" and tags["gate.labels_needed"] == "134" and tags["gate.rows"] == "60"
    )
    assert json.loads(tags["gate.decision"])["labels_needed"] == 134
    assert logged["labels_needed"] == 134 and logged["effect"] == d["effect"]
    assert mio.champion_version(env.client, env.settings.model_name) == 1


def test_a_clear_gain_on_enough_rows_is_promoted_with_its_evidence(
    env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    job = retrain_job(env, monkeypatch, labelled(600, seed=12))  # 180 recent rows
    res = job["result"]
    d = res["decision"]
    assert d["promoted"] and d["method"] == "paired-bootstrap" and d["rows"] == 180, d["reason"]
    assert d["effect_low"] <= d["effect"] <= d["effect_high"] < 0 and d["labels_needed"] is None
    assert d["effect_relative"] >= env.settings.promotion_min_improvement
    errs = d["errors"]
    assert errs["recent_labelled"]["challenger_rmse"] < errs["recent_labelled"]["champion_rmse"]
    assert {"challenger_rmse", "champion_rmse"} <= set(errs["base_holdout"]) and d["drifted"] is True
    assert "trade-off" in d["reason"]
    tags, logged = recorded(env, res["version"], res["run_id"], tmp_path)
    assert tags["gate.promoted"] == "true" and tags["gate.method"] == "paired-bootstrap"
    assert tags["gate.rows"] == "180" and tags["gate.effect_interval"].endswith("at 95%")
    assert json.loads(tags["gate.errors"]) == errs
    assert logged["effect_low"] == d["effect_low"] and logged["errors"] == errs
    assert mio.champion_version(env.client, env.settings.model_name) == res["version"]


def test_a_champion_refitted_on_the_base_holdout_is_judged_there_by_its_recorded_error(
    env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = env.settings.model_name

    def record(version: int) -> gate.BaseHoldout | None:
        tags = dict(env.client.get_model_version(name, str(version)).tags)
        return gate.BaseHoldout.from_json(tags.get(gate.BASE_HOLDOUT_TAG))

    first = record(1)  # base data only: no refit, never trained on its base holdout
    assert first is not None and not first.trained_on and first.rows == 240
    champ = mio.champion_version(env.client, name)
    assert champ is not None and champ > 1
    promoted = record(champ)  # REFIT_ON_BASE_HOLDOUT (default): the served refit saw the base holdout
    assert promoted is not None and promoted.trained_on and promoted.same_rows(first)
    d = retrain_job(env, monkeypatch, labelled(600, seed=12))["result"]["decision"]
    assert d["champion_version"] == champ
    assert d["champion"]["base_holdout_rmse"] == pytest.approx(promoted.metrics["rmse"]), d["reason"]
    assert f"champion v{champ} was refitted on the base holdout" in d["reason"], d["reason"]
