"""Fake peers of the monitor (inference's prediction log, the trainer's retrain API) that speak the
platform contracts over real HTTP (serve them with ``ThreadServer``), and a minimal export."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import FastAPI, Header, HTTPException, Query

import gradeflow_shared.synth as synth
from gradeflow_monitor.config import MonitorSettings
from gradeflow_shared.contracts import Job, LoggedPrediction, PredictionPage, RetrainRequest
from gradeflow_shared.manifest import (
    RECENT_REFERENCE_FILE,
    REFERENCE_FILE,
    FeatureSpec,
    Manifest,
    PerformanceBaseline,
    publish,
)

# what the monitor's tests configure as ADMIN_TOKEN (long enough for require_secret)
ADMIN_TOKEN = "monitor-tests-admin-token-4f9c2e"


class FakeInference:
    """The prediction log of inference: GET /predictions as in the contract (paged, ascending ids)."""

    def __init__(self) -> None:
        self.rows: list[LoggedPrediction] = []
        self.requests = 0
        self.app = FastAPI()

        @self.app.get("/health")
        def health() -> dict[str, str]:
            return {"status": "ok"}

        @self.app.get("/predictions")
        def predictions(
            since_id: int = 0, limit: int = Query(1000, le=1000), labelled: bool = False
        ) -> dict[str, Any]:
            self.requests += 1
            items = [r for r in self.rows if r.id > since_id and (not labelled or r.actual is not None)][
                :limit
            ]
            nxt = items[-1].id if len(items) == limit else None
            return PredictionPage(items=items, next_since_id=nxt).model_dump(mode="json")

    def log(self, df: pd.DataFrame, version: int, predictions: Any = None, labelled: float = 1.0) -> None:
        """Append rows (features from ``df``; actual = the target for the first ``labelled`` share)."""
        start = len(self.rows)
        n_lab = int(round(labelled * len(df)))
        preds = predictions if predictions is not None else df[synth.TARGET].to_numpy()
        for i, (rec, pred) in enumerate(zip(df.to_dict("records"), preds, strict=True)):
            actual = rec.pop(synth.TARGET, None)
            self.rows.append(
                LoggedPrediction(
                    id=start + i + 1,
                    request_id=uuid.uuid4().hex,
                    ts=datetime.now(UTC),
                    model_version=version,
                    features={
                        str(k): (None if isinstance(v, float) and v != v else v) for k, v in rec.items()
                    },
                    prediction=float(pred),
                    latency_ms=1.0,
                    actual=float(actual) if actual is not None and i < n_lab else None,
                    feedback_at=datetime.now(UTC) if i < n_lab else None,
                )
            )


class FakeTrainer:
    """POST /retrain (Bearer token; answers the active job instead of starting a second), GET /jobs/{id}."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.jobs: dict[str, Job] = {}
        self.requests: list[RetrainRequest] = []
        self.app = FastAPI()

        @self.app.get("/health")
        def health() -> dict[str, str]:
            return {"status": "ok"}

        @self.app.post("/retrain", status_code=202)
        def retrain(body: RetrainRequest, authorization: str = Header("")) -> dict[str, Any]:
            if authorization != f"Bearer {self.token}":
                raise HTTPException(401, "bad token")
            self.requests.append(body)
            for j in self.jobs.values():
                if j.state in ("queued", "running"):
                    return j.model_dump(mode="json")
            job = Job(
                id=uuid.uuid4().hex[:12],
                state="queued",
                reason=body.reason,
                monitor_run_id=body.monitor_run_id,
                created_at=datetime.now(UTC),
            )
            self.jobs[job.id] = job
            return job.model_dump(mode="json")

        @self.app.get("/jobs/{job_id}")
        def job(job_id: str) -> dict[str, Any]:
            if job_id not in self.jobs:
                raise HTTPException(404, "no such job")
            return self.jobs[job_id].model_dump(mode="json")

    def finish_all(self) -> None:
        for j in self.jobs.values():
            j.state = "succeeded"


def simple_export(
    model_dir: Path,
    version: int = 1,
    reference_rows: int = 1000,
    metrics: dict[str, float] | None = None,
    baseline: PerformanceBaseline | None = None,
    recent: pd.DataFrame | None = None,
) -> Path:
    """A minimal export (manifest + reference.csv) of the synthetic schema via manifest.publish
    (``baseline``: its performance_baseline; None = none, as exports before the field; ``recent``: the
    recent labelled rows written as reference_recent.csv)."""
    ref = synth.generate(reference_rows, seed=7)
    feats = [FeatureSpec(name=c.name, kind=c.kind, categories=c.categories) for c in synth.COLUMNS]
    m = Manifest(
        model_name="student-grade",
        version=version,
        run_id=f"run{version}",
        target=synth.TARGET,
        features=feats,
        metrics=metrics or {"mae": 1.0, "rmse": 1.25},
        performance_baseline=baseline,
    )

    def write(d: Path) -> None:
        ref.to_csv(d / REFERENCE_FILE, index=False)
        if recent is not None:
            recent.to_csv(d / RECENT_REFERENCE_FILE, index=False)

    return publish(model_dir, m, write)


def monitor_settings(
    data_dir: Path, model_dir: Path, inference_url: str, trainer_url: str, **overrides: Any
) -> MonitorSettings:
    """Settings of a monitor under test: the given peers, no scheduler, quick retries, ADMIN_TOKEN."""
    base: dict[str, Any] = dict(
        data_dir=data_dir,
        model_dir=model_dir,
        inference_url=inference_url,
        trainer_url=trainer_url,
        admin_token=ADMIN_TOKEN,
        scheduler_enabled=False,
        min_labelled_rows=50,
        retrain_cooldown_seconds=0,
        http_retries=1,
        http_backoff_seconds=0.05,
        page_size=250,
    )
    base.update(overrides)
    return MonitorSettings(**base)
