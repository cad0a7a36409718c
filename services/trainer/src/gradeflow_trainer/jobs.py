"""A single-worker job runner for training jobs.

One background thread runs one job at a time. ``submit`` coalesces: while a job is queued or
running it returns THAT job (``created=False``) instead of starting another, so a storm of
retrain triggers never queues a storm of trainings. Jobs live in memory and are persisted as
JSON in the trainer's service folder. A job found queued/running at start-up was interrupted by a
restart: it is marked failed at once, and ``settle_interrupted`` (called by the start-up
reconciliation, which can ask the registry) then gives it the final state of what it really did
(registered? gate decided? promoted?).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path

from gradeflow_shared.contracts import Job, RetrainRequest, TrainResult
from gradeflow_shared.errors import GradeflowError

from .progress import Progress

logger = logging.getLogger(__name__)

TrainFn = Callable[[RetrainRequest, Progress], TrainResult]

MAX_JOBS_KEPT = 200
_CURRENT_JOB: ContextVar[str | None] = ContextVar("trainer_job", default=None)


def current_job_id() -> str | None:
    """The id of the job the calling code runs in (None outside a job, e.g. the CLI)."""
    return _CURRENT_JOB.get()


Outcome = tuple[TrainResult | None, str | None]  # (result, None) = succeeded; (None, error) = failed


def _now() -> datetime:
    return datetime.now(UTC)


class JobRunner:
    """Runs ``train_fn(request, progress)`` jobs one at a time on a worker thread."""

    def __init__(
        self,
        train_fn: TrainFn,
        state_file: Path | None = None,
        on_finish: Callable[[Job], None] | None = None,
    ) -> None:
        self._train_fn = train_fn
        self._on_finish = on_finish  # told of every job that ends here (the trainer's /metrics)
        self._state_file = state_file
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._queue: list[str] = []
        self._requests: dict[str, RetrainRequest] = {}
        self._stop = False
        self._thread: threading.Thread | None = None
        self.interrupted: list[str] = []  # jobs found queued/running at start (see settle_interrupted)
        self._load()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="trainer-jobs", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking jobs; a running training is not interrupted (the thread is a daemon)."""
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # ------------------------------------------------------------ API
    def submit(self, request: RetrainRequest) -> tuple[Job, bool]:
        """Queue a job, or return the job already queued/running. ``(job, created)``."""
        with self._lock:
            for job in self._jobs.values():
                if job.state in ("queued", "running"):
                    logger.info("retrain (%s) coalesced into job %s (%s)", request.reason, job.id, job.state)
                    return job.model_copy(deep=True), False
            job = Job(
                id=uuid.uuid4().hex[:12],
                state="queued",
                reason=request.reason,
                monitor_run_id=request.monitor_run_id,
                created_at=_now(),
                stage="queued",
            )
            self._jobs[job.id] = job
            self._requests[job.id] = request
            self._queue.append(job.id)
            self._prune()
            self._save()
            self._wake.notify_all()
            logger.info("job %s queued (%s)", job.id, request.reason)
            return job.model_copy(deep=True), True

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.model_copy(deep=True) if job else None

    def list(self) -> list[Job]:
        with self._lock:
            return [
                j.model_copy(deep=True)
                for j in sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)
            ]

    def active(self) -> Job | None:
        with self._lock:
            for job in self._jobs.values():
                if job.state in ("queued", "running"):
                    return job.model_copy(deep=True)
        return None

    def wait(self, job_id: str, timeout: float) -> Job | None:
        """Block until the job is finished (tests, CLI)."""
        deadline = _now().timestamp() + timeout
        with self._lock:
            while True:
                job = self._jobs.get(job_id)
                if job is None or job.state in ("succeeded", "failed"):
                    return job.model_copy(deep=True) if job else None
                remaining = deadline - _now().timestamp()
                if remaining <= 0:
                    return job.model_copy(deep=True)
                self._wake.wait(min(remaining, 0.5))

    # ------------------------------------------------------------ worker
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                job_id = self._queue.pop(0)
                job = self._jobs[job_id]
                request = self._requests.pop(job_id, RetrainRequest(reason=job.reason))
                job.state = "running"
                job.started_at = _now()
                job.stage = "starting"
                self._save()
            self._run(job_id, request)

    def _run(self, job_id: str, request: RetrainRequest) -> None:
        def progress(stage: str, fraction: float) -> None:
            with self._lock:
                j = self._jobs[job_id]
                j.progress = max(j.progress, min(1.0, max(0.0, float(fraction))))
                j.stage = stage
                self._save()

        logger.info("job %s running (%s)", job_id, request.reason)
        token = _CURRENT_JOB.set(job_id)
        try:
            result = self._train_fn(request, progress)
        except GradeflowError as exc:
            self._finish(job_id, error=f"{exc.error_code}: {exc.message}")
            logger.error("job %s failed: %s", job_id, exc.message)
        except Exception as exc:  # noqa: BLE001 - a job must end as failed with the cause, never hang
            logger.exception("job %s failed", job_id)
            self._finish(job_id, error=f"{exc.__class__.__name__}: {exc}")
        else:
            self._finish(job_id, result=result)
            logger.info(
                "job %s succeeded: version %s, promoted=%s", job_id, result.version, result.decision.promoted
            )
        finally:
            _CURRENT_JOB.reset(token)

    def settle_interrupted(self, outcome: Callable[[Job], Outcome]) -> None:
        """Give each job interrupted by the restart the final state ``outcome(job)`` derives from what it
        actually did (looked up in the registry)."""
        for job_id in list(self.interrupted):
            with self._lock:
                job = self._jobs.get(job_id)
                if job is None:
                    continue
                snapshot = job.model_copy(deep=True)
            result, error = outcome(snapshot)
            with self._lock:
                job.result, job.error = result, error
                job.state = "succeeded" if result is not None else "failed"
                if result is not None:
                    job.progress, job.stage = 1.0, "done"
                self._save()
                self._wake.notify_all()
            self.interrupted.remove(job_id)
            logger.info(
                "job %s interrupted by a restart, settled as %s: %s", job_id, job.state, error or "done"
            )

    def _finish(self, job_id: str, result: TrainResult | None = None, error: str | None = None) -> None:
        with self._lock:
            j = self._jobs[job_id]
            j.finished_at = _now()
            j.result = result
            j.error = error
            j.state = "failed" if error is not None else "succeeded"
            if error is None:
                j.progress = 1.0
                j.stage = "done"
            self._save()
            if self._on_finish is not None:  # before the waiters wake: they see the job counted
                self._on_finish(j.model_copy())
            self._wake.notify_all()

    # ------------------------------------------------------------ persistence
    def _prune(self) -> None:
        if len(self._jobs) <= MAX_JOBS_KEPT:
            return
        done = sorted(
            (j for j in self._jobs.values() if j.state in ("succeeded", "failed")), key=lambda j: j.created_at
        )
        for j in done[: len(self._jobs) - MAX_JOBS_KEPT]:
            del self._jobs[j.id]

    def _save(self) -> None:
        if self._state_file is None:
            return
        data = [j.model_dump(mode="json") for j in self._jobs.values()]
        tmp = self._state_file.with_suffix(f".tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self._state_file)
        except OSError as exc:
            logger.warning("could not persist jobs to %s: %s", self._state_file, exc)

    def _load(self) -> None:
        if self._state_file is None or not self._state_file.is_file():
            return
        try:
            raw = json.loads(self._state_file.read_text())
            jobs = [Job.model_validate(d) for d in raw]
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable job file %s: %s", self._state_file, exc)
            return
        for job in jobs:
            if job.state in ("queued", "running"):
                job.state = "failed"
                job.error = "interrupted: the trainer restarted while this job was " + (job.stage or "queued")
                job.finished_at = _now()
                self.interrupted.append(job.id)
            self._jobs[job.id] = job
        self._save()
