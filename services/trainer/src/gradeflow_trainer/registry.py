"""What the trainer's flows ask of a model registry, and an in-memory one for tests.

``Registry`` is the handful of operations the flows need (log a candidate run and register its
model, read / move the champion alias, tag versions, load a version's model, read a run's export
artifacts, read / append the promotion events). ``mlflow_io.MlflowRegistry`` is the adapter on a
real MLflow server; ``InMemoryRegistry`` keeps the same state in dictionaries so the gate ->
export -> alias -> history path runs in unit tests without a server.

A registry is bound to one registered model name.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from gradeflow_shared.contracts import GateDecision, PromotionEvent
from gradeflow_shared.errors import ExportError, NotFound

ALIAS = "champion"
EXPORT_ARTIFACTS = "export"  # the run folder holding what a later export of a version needs
TAG_MAX = 5000  # MLflow's limit on tag values


@dataclass(frozen=True)
class LoggedInput:
    """A dataset logged as an input of a run (``context``: training / evaluation)."""

    frame: pd.DataFrame
    name: str
    context: str
    source: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """Everything a candidate's run records, and the model it registers."""

    run_name: str
    target: str
    pipeline: Any
    tags: dict[str, str]
    params: dict[str, Any]
    metrics: dict[str, float]
    cv_rmse: dict[str, float]
    inputs: list[LoggedInput]
    y_holdout: np.ndarray  # for the predicted-vs-actual and residual plots of the base holdout
    pred_holdout: np.ndarray
    artifacts_dir: Path  # logged under EXPORT_ARTIFACTS
    input_example: pd.DataFrame  # training rows: the signature and the input example come from them


@dataclass(frozen=True)
class Registered:
    run_id: str
    version: int
    model_uri: str


@dataclass(frozen=True)
class VersionInfo:
    version: int
    run_id: str
    source: str
    tags: dict[str, str]


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    status: str  # MLflow's run status: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    tags: dict[str, str]


class Registry(Protocol):
    model_name: str

    def log_candidate(self, record: RunRecord) -> Registered:
        """Log a run with ``record`` and register its pipeline as a new version."""
        ...

    def record_run_decision(self, run_id: str, decision: GateDecision) -> None:
        """Tag the run with the gate's verdict and keep the whole decision with it."""
        ...

    def champion_version(self) -> int | None: ...

    def set_champion(self, version: int) -> None: ...

    def version(self, version: int) -> VersionInfo:
        """The version (NotFound when it does not exist)."""
        ...

    def set_version_tags(self, version: int, tags: dict[str, str]) -> None: ...

    def set_model_tag(self, key: str, value: str) -> None: ...

    def load_model(self, version: int, tmp: Path) -> Any:
        """The fitted pipeline of a version (``tmp``: a scratch folder)."""
        ...

    def export_artifacts(self, run_id: str, dst: Path) -> Path:
        """Download the run's EXPORT_ARTIFACTS folder into ``dst``; its local path."""
        ...

    def promotion_events(self) -> list[PromotionEvent]:
        """Every change of the champion, oldest first: the source of truth of the history."""
        ...

    def add_promotion_event(self, event: PromotionEvent) -> None: ...

    def run_url(self, run_id: str) -> str: ...

    def check_available(self) -> None:
        """ServiceUnavailable (503) when the registry cannot take a training now (a cheap probe)."""
        ...

    def versions(self) -> list[VersionInfo]:
        """Every registered version of the model, oldest first."""
        ...

    def find_runs(self, job_id: str | None = None, running: bool = False) -> list[RunInfo]:
        """The trainer's runs (tag JOB_TAG set), of one job or every one; ``running``: RUNNING ones only."""
        ...

    def end_run(self, run_id: str, status: str) -> None:
        """Give a run left RUNNING by a dead job its final status (FAILED or KILLED)."""
        ...


JOB_TAG = "gradeflow.job_id"  # run tag: the trainer job that logged the run


@dataclass
class _Version:
    run_id: str
    pipeline: Any
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class _Run:
    record: RunRecord
    artifacts: dict[str, bytes]
    tags: dict[str, str] = field(default_factory=dict)
    dicts: dict[str, Any] = field(default_factory=dict)
    status: str = "FINISHED"


class InMemoryRegistry:
    """A Registry in dictionaries (unit tests): runs, versions, tags, alias and events."""

    def __init__(self, model_name: str = "student-grade", run_prefix: str = "run") -> None:
        self.model_name = model_name
        self.run_prefix = run_prefix  # another prefix stands for another store (run ids differ)
        self.runs: dict[str, _Run] = {}
        self.model_versions: dict[int, _Version] = {}
        self.model_tags: dict[str, str] = {}
        self.alias: int | None = None
        self.events: list[PromotionEvent] = []

    def log_candidate(self, record: RunRecord) -> Registered:
        run_id = f"{self.run_prefix}-{len(self.runs) + 1}"
        files = {p.name: p.read_bytes() for p in record.artifacts_dir.iterdir() if p.is_file()}
        self.runs[run_id] = _Run(record=record, artifacts=files, tags=dict(record.tags))
        version = len(self.model_versions) + 1
        self.model_versions[version] = _Version(run_id=run_id, pipeline=record.pipeline)
        return Registered(run_id=run_id, version=version, model_uri=f"memory:/{self.model_name}/{version}")

    def record_run_decision(self, run_id: str, decision: GateDecision) -> None:
        run = self.runs[run_id]
        run.tags.update({"gate.promoted": str(decision.promoted).lower(), "gate.reason": decision.reason})
        run.dicts["gate/decision.json"] = decision.model_dump(mode="json")

    def champion_version(self) -> int | None:
        return self.alias

    def set_champion(self, version: int) -> None:
        self.version(version)
        self.alias = version

    def version(self, version: int) -> VersionInfo:
        v = self.model_versions.get(version)
        if v is None:
            raise NotFound(
                f"model '{self.model_name}' has no version {version}", details={"version": version}
            )
        return VersionInfo(
            version=version,
            run_id=v.run_id,
            source=f"memory:/{self.model_name}/{version}",
            tags=dict(v.tags),
        )

    def set_version_tags(self, version: int, tags: dict[str, str]) -> None:
        self.version(version)
        self.model_versions[version].tags.update(tags)

    def set_model_tag(self, key: str, value: str) -> None:
        self.model_tags[key] = value

    def load_model(self, version: int, tmp: Path) -> Any:
        self.version(version)
        return self.model_versions[version].pipeline

    def export_artifacts(self, run_id: str, dst: Path) -> Path:
        run = self.runs.get(run_id)
        if run is None:
            raise ExportError(f"run {run_id} has no artifact '{EXPORT_ARTIFACTS}'")
        out = dst / EXPORT_ARTIFACTS
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for name, data in run.artifacts.items():
            (out / name).write_bytes(data)
        return out

    def promotion_events(self) -> list[PromotionEvent]:
        return list(self.events)

    def add_promotion_event(self, event: PromotionEvent) -> None:
        self.events.append(event)

    def run_url(self, run_id: str) -> str:
        return f"memory:/runs/{run_id}"

    def check_available(self) -> None:
        return None

    def versions(self) -> list[VersionInfo]:
        return [self.version(v) for v in sorted(self.model_versions)]

    def find_runs(self, job_id: str | None = None, running: bool = False) -> list[RunInfo]:
        return [
            RunInfo(run_id=rid, status=r.status, tags=dict(r.tags))
            for rid, r in self.runs.items()
            if r.tags.get(JOB_TAG) and (job_id is None or r.tags[JOB_TAG] == job_id)
            if not running or r.status == "RUNNING"
        ]

    def end_run(self, run_id: str, status: str) -> None:
        self.runs[run_id].status = status
