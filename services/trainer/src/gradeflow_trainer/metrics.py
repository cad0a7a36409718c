"""Prometheus metrics of the trainer (own registry per app, so tests can build several).

Jobs are counted when they end (``JobRunner`` calls ``on_job_finished``). Champion changes are counted
from the promotion history (``history.py``, the one record of every change) at scrape time, by its
``action``: a new kind of event appears as a new label value without a change here. The champion
version is the one ``champion.json`` names (written by the trainer after every change). Nothing here
calls MLflow: a scrape answers while the registry is down.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gradeflow_shared.contracts import Job
from gradeflow_shared.errors import ExportError
from gradeflow_shared.manifest import read_champion_marker

from .config import TrainerSettings
from .history import History

logger = logging.getLogger(__name__)

OUTCOMES = ("succeeded", "failed")
# exported from 0 even before the first such event, so that increase() sees the first one (a counter
# series that appears at 1 shows no increase); any other action appears when it first happens
WATCHED_ACTIONS = (
    "gate",
    "promote",
    "rollback",
    "rollout_start",
    "rollout_stage",
    "rollout_promote",
    "rollout_rollback",
    "rollout_expire",
    "rollout_abort",
)
# a training takes seconds (no search, small data) to tens of minutes (search on a large file)
DURATION_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)


class _StateCollector:
    """Read at scrape time: the history's events by action, the champion marker, the jobs in flight."""

    def __init__(self, settings: TrainerSettings, active: Callable[[], Job | None]) -> None:
        self.settings = settings
        self.history = History(settings.service_dir("trainer"))
        self.active = active

    def collect(self) -> Iterable[Metric]:
        events = CounterMetricFamily(
            "gradeflow_trainer_promotion_events",
            "Champion changes recorded in the promotion history, by action (gate, promote, rollback and "
            "the rollout's decisions)",
            labels=["action"],
        )
        for action, n in sorted(
            Tally(e.action for e in self.history.events(self.settings.model_name)).items()
        ):
            events.add_metric([action], n)
        yield events
        champion = GaugeMetricFamily(
            "gradeflow_trainer_champion_version",
            "The champion version champion.json names (absent while there is none)",
        )
        try:
            marker = read_champion_marker(self.settings.models_path)
        except ExportError as exc:
            logger.warning("champion marker unreadable: %s", exc)
            marker = None
        if marker is not None and marker.model_name == self.settings.model_name:
            champion.add_metric([], marker.version)
        yield champion
        active = GaugeMetricFamily(
            "gradeflow_trainer_jobs_active", "Training jobs queued or running", labels=["state"]
        )
        job = self.active()  # the runner keeps at most one job queued or running (it coalesces)
        for state in ("queued", "running"):
            active.add_metric([state], 1 if job is not None and job.state == state else 0)
        yield active

    def describe(self) -> Iterable[Metric]:
        return []


class TrainerMetrics:
    def __init__(self, settings: TrainerSettings, active: Callable[[], Job | None]) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "gradeflow_trainer_jobs", "Training jobs ended, by outcome", ["outcome"], registry=self.registry
        )
        self.duration = Histogram(
            "gradeflow_trainer_job_duration_seconds",
            "Run time of ended training jobs (start to end), by outcome",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        for outcome in OUTCOMES:  # both series exist from the start (a rate over 0 is 0, not absent)
            self.jobs.labels(outcome)
            self.duration.labels(outcome)
        self.registry.register(_StateCollector(settings, active))  # type: ignore[arg-type]

    def on_job_finished(self, job: Job) -> None:
        outcome = "succeeded" if job.state == "succeeded" else "failed"
        self.jobs.labels(outcome).inc()
        if job.started_at is not None and job.finished_at is not None:
            self.duration.labels(outcome).observe(
                max(0.0, (job.finished_at - job.started_at).total_seconds())
            )

    def render(self) -> bytes:
        return generate_latest(self.registry)
