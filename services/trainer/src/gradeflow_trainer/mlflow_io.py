"""Everything the trainer asks of the MLflow server (over HTTP): runs, registry, aliases.

``MlflowRegistry`` is the adapter of the ``registry.Registry`` protocol on a real server; the
functions below it are the building blocks it (and the start-up check) uses.

The champion is the registered model version carrying the ``champion`` alias (stages are
deprecated). Models are logged with the **skops** format (MLflow 3's default); loading one
back checks that every type skops reports as untrusted belongs to a short allow-list of
packages (scikit-learn, numpy, scipy) before ``skops.io.load``, so no MLflow-wide "allow
pickle" switch is needed and no arbitrary code runs from the artifact.

Fail fast: MLflow's client retries a failed request 7 times with long backoffs by default, so an
outage took minutes to fail a job. ``apply_http_settings`` bounds every request by the trainer's
MLFLOW_HTTP_* settings; each MLflow operation raises ``UpstreamError`` naming itself and the FIRST
failure (``mlflow_op``); a run whose job failed is ended FAILED with one bounded attempt, else at
the next training (``OPEN_RUNS``); ``check_available`` is the cheap probe ``POST /retrain`` runs
before accepting a job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import requests

from gradeflow_shared.contracts import GateDecision, PromotionEvent
from gradeflow_shared.errors import ExportError, NotFound, ServiceUnavailable, UpstreamError

from .config import TrainerSettings
from .registry import ALIAS, EXPORT_ARTIFACTS, JOB_TAG, TAG_MAX, Registered, RunInfo, RunRecord, VersionInfo

logger = logging.getLogger(__name__)

TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.")
PROBE_TIMEOUT = 2.0  # seconds per request of the availability probe
PROBE_TTL = 5.0  # seconds a probe's verdict is reused
OPEN_RUNS = "mlflow_open_runs.json"  # runs of failed jobs not ended yet (trainer's service folder)


def http_env(settings: TrainerSettings) -> dict[str, str]:
    """MLflow's own variables bounding each of its HTTP requests, from the trainer's settings."""
    return {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(settings.mlflow_http_timeout),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(settings.mlflow_http_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(settings.mlflow_http_backoff),
    }


def apply_http_settings(settings: TrainerSettings) -> None:
    """Bound MLflow's HTTP requests (timeout, retries, backoff) by the trainer's settings.

    MLflow reads these variables at every request (``rest_utils.http_request``, not at import) and
    caches one ``requests`` session per retry configuration (``request_utils``), so setting them
    before a client is used bounds every later request of this process.
    """
    os.environ.update(http_env(settings))


def configure(settings: TrainerSettings) -> None:
    """Point the fluent API (tracking AND registry) at the server, with bounded HTTP requests."""
    import mlflow

    apply_http_settings(settings)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in service logs
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)


def client(settings: TrainerSettings) -> Any:
    from mlflow import MlflowClient

    apply_http_settings(settings)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes / contexts, outermost first."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _transport_cause(exc: BaseException) -> BaseException | None:
    """The connection error or timeout behind ``exc`` (MLflow wraps it in MlflowException)."""
    for e in reversed(_chain(exc)):
        if isinstance(e, requests.ConnectionError | requests.Timeout):
            return e
    return None


def _upstream(exc: Exception, what: str, uri: str | None = None) -> UpstreamError:
    """The platform's error for a failed MLflow operation: the server, the operation, the cause."""
    if uri is None:
        import mlflow

        uri = mlflow.get_tracking_uri()
    cause = _transport_cause(exc)
    where = f"MLflow unreachable at {uri}" if cause is not None else f"MLflow at {uri} failed"
    kind = (cause or exc).__class__.__name__
    return UpstreamError(f"{where}: {what}: {kind}: {str(exc)[:500]}", details={"operation": what})


@contextlib.contextmanager
def mlflow_op(what: str, uri: str | None = None) -> Iterator[None]:
    """A failed MLflow operation as UpstreamError naming ``what`` (the cause is kept)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, requests.RequestException) as exc:
        raise _upstream(exc, what, uri) from exc


def _probe(uri: str) -> str | None:
    """Why MLflow at ``uri`` cannot take a training now (None: it can): /health + one cheap call."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET /health", "/health", None),
        ("search registered models", "/api/2.0/mlflow/registered-models/search", {"max_results": 1}),
    ]
    for what, endpoint, params in calls:
        try:
            resp = http_request(
                creds,
                endpoint,
                "GET",
                max_retries=0,
                backoff_factor=0,
                timeout=PROBE_TIMEOUT,
                raise_on_status=False,
                params=params,
            )
        except MlflowException as exc:
            cause = _transport_cause(exc) or exc
            return f"{what}: {cause.__class__.__name__}: {str(exc)[:300]}"
        if resp.status_code != 200:
            return f"{what}: HTTP {resp.status_code}: {resp.text[:200]}"
    return None


_probes: dict[str, tuple[float, str | None]] = {}
_probes_lock = threading.Lock()


def check_available(settings: TrainerSettings) -> None:
    """ServiceUnavailable unless the MLflow server answers now (verdict reused for PROBE_TTL seconds)."""
    uri = settings.mlflow_tracking_uri
    with _probes_lock:
        seen = _probes.get(uri)
        if seen is None or time.monotonic() - seen[0] > PROBE_TTL:
            seen = (time.monotonic(), _probe(uri))
            _probes[uri] = seen
    if seen[1] is not None:
        raise ServiceUnavailable(
            f"MLflow unavailable at {uri} ({seen[1]}): no training started; retry when MLflow is back",
            details={"mlflow_tracking_uri": uri},
        )


def wait_for_server(settings: TrainerSettings, timeout: float | None = None) -> None:
    """Poll the server's /health (raises UpstreamError when it never answers)."""
    url = settings.mlflow_tracking_uri.rstrip("/") + "/health"
    deadline = time.monotonic() + (settings.mlflow_wait if timeout is None else timeout)
    last = ""
    while True:
        try:
            r = httpx.get(url, timeout=3.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.TransportError as exc:
            last = f"{exc.__class__.__name__}: {exc}"
        if time.monotonic() > deadline:
            raise UpstreamError(f"MLflow server {settings.mlflow_tracking_uri} not reachable: {last}")
        time.sleep(1.0)


def _missing(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower()


def champion_version(cl: Any, name: str) -> int | None:
    """The version holding the champion alias, or None (no model / no alias)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = cl.get_model_version_by_alias(name, ALIAS)
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise _upstream(exc, f"reading alias {name}@{ALIAS}") from exc
    return int(mv.version)


def get_version(cl: Any, name: str, version: int) -> Any:
    """The ModelVersion entity (NotFound when it does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return cl.get_model_version(name, str(version))
    except MlflowException as exc:
        if _missing(exc):
            raise NotFound(f"model '{name}' has no version {version}", details={"version": version}) from exc
        raise _upstream(exc, f"reading {name} v{version}") from exc


def set_champion(cl: Any, name: str, version: int) -> None:
    with mlflow_op(f"moving {name}@{ALIAS} to v{version}"):
        cl.set_registered_model_alias(name, ALIAS, str(version))


def set_version_tags(cl: Any, name: str, version: int, tags: dict[str, str]) -> None:
    with mlflow_op(f"tagging {name} v{version}"):
        for k, v in tags.items():
            cl.set_model_version_tag(name, str(version), k, v[:TAG_MAX])


def set_model_tag(cl: Any, name: str, key: str, value: str) -> None:
    with mlflow_op(f"tagging registered model {name}"):
        cl.set_registered_model_tag(name, key, value[:TAG_MAX])


def get_model_tags(cl: Any, name: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return dict(cl.get_registered_model(name).tags or {})
    except MlflowException as exc:
        if _missing(exc):
            return {}
        raise _upstream(exc, f"reading registered model {name}") from exc


def run_url(settings: TrainerSettings, run_id: str) -> str:
    try:
        experiment_id = client(settings).get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - a link is best effort
        experiment_id = "0"
    return f"{settings.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"


def download(cl: Any, run_id: str, path: str, dst: Path) -> Path:
    """Download a run artifact (file or folder) into ``dst``."""
    try:
        return Path(cl.download_artifacts(run_id, path, str(dst)))
    except Exception as exc:  # noqa: BLE001 - mlflow raises several types for a missing artifact
        raise ExportError(f"run {run_id} has no artifact '{path}': {exc}") from exc


def skops_trusted_types(obj: Any) -> list[str]:
    """Types skops would refuse by default in a dump of ``obj`` (passed to log_model)."""
    import skops.io

    return list(skops.io.get_untrusted_types(data=skops.io.dumps(obj)))


MODEL_REQUIREMENTS = ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")


def model_requirements() -> list[str]:
    """The logged model's pip requirements, pinned to the installed versions.

    Given explicitly, so that ``log_model`` does not infer them: its inference (``uv export``, else
    loading the model in a subprocess to capture its imports) took 24 s of a 63 s retrain on a busy
    2-core machine."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in MODEL_REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def load_version_model(cl: Any, name: str, version: int, tmp: Path) -> Any:
    """The fitted sklearn pipeline of a registered version, loaded safely from its skops file."""
    import skops.io
    import yaml

    mv = get_version(cl, name, version)
    src = mv.source  # models:/m-<id>
    import mlflow

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=src, dst_path=str(tmp)))
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"cannot download {name} v{version} ({src}): {exc}") from exc
    conf = yaml.safe_load((local / "MLmodel").read_text())
    flavor = conf.get("flavors", {}).get("sklearn", {})
    fmt = flavor.get("serialization_format")
    if fmt != "skops":
        raise ExportError(
            f"{name} v{version} is stored as '{fmt}', not skops: refusing to unpickle it "
            "(retrain, or promote a skops version)"
        )
    path = local / flavor.get("pickled_model", "model.skops")
    untrusted = skops.io.get_untrusted_types(file=path)
    bad = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if bad:
        raise ExportError(f"{name} v{version}: skops file references untrusted types {bad}")
    return skops.io.load(path, trusted=untrusted)


# ------------------------------------------------------------------ the Registry adapter
EVENT_TAG_PREFIX = "gradeflow.promotion."  # one registered-model tag per promotion event


def _log_plots(y_true: np.ndarray, y_pred: np.ndarray, prefix: str = "base_holdout") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    yt = np.asarray(y_true, dtype=float)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(yt, y_pred, s=6, alpha=0.5)
    lo, hi = float(min(yt.min(), y_pred.min())), float(max(yt.max(), y_pred.max()))
    ax.plot([lo, hi], [lo, hi], "r--", lw=1)
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title(f"Predicted vs actual ({prefix})")
    mlflow.log_figure(fig, f"plots/{prefix}_predicted_vs_actual.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    resid = yt - y_pred
    ax.scatter(y_pred, resid, s=6, alpha=0.5)
    ax.axhline(0, color="r", lw=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual - predicted")
    ax.set_title(f"Residuals ({prefix})")
    mlflow.log_figure(fig, f"plots/{prefix}_residuals.png")
    plt.close(fig)


def _event_tag(event: PromotionEvent) -> str:
    """The event as JSON within MLflow's tag limit (the reason is shortened when needed)."""
    text = event.model_dump_json()
    if len(text) <= TAG_MAX:
        return text
    room = max(0, len(event.reason) - (len(text) - TAG_MAX) - 3)
    return event.model_copy(update={"reason": event.reason[:room] + "..."}).model_dump_json()


class MlflowRegistry:
    """``registry.Registry`` on an MLflow tracking server and Model Registry (over HTTP)."""

    def __init__(self, settings: TrainerSettings) -> None:
        configure(settings)
        self.settings = settings
        self.model_name = settings.model_name
        self.client = client(settings)

    def _open_runs_file(self) -> Path:
        return self.settings.service_dir("trainer") / OPEN_RUNS

    def open_runs(self) -> list[str]:
        """Runs of failed jobs that could not be ended FAILED yet (MLflow was down)."""
        try:
            data = json.loads(self._open_runs_file().read_text())
        except FileNotFoundError:
            return []
        except ValueError:
            logger.warning("ignoring unreadable %s", self._open_runs_file())
            return []
        return [str(r) for r in data] if isinstance(data, list) else []

    def _keep_open_runs(self, run_ids: list[str]) -> None:
        path = self._open_runs_file()
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(sorted(set(run_ids))))
        os.replace(tmp, path)

    def end_open_runs(self) -> None:
        """End FAILED the runs earlier failed jobs left open (UpstreamError while MLflow is still down)."""
        left = self.open_runs()
        for run_id in list(left):
            with mlflow_op(f"end run {run_id} of an earlier failed job", self.settings.mlflow_tracking_uri):
                self.client.set_terminated(run_id, "FAILED")
            left.remove(run_id)
            self._keep_open_runs(left)
            logger.info("MLflow run %s of an earlier failed job ended FAILED", run_id)

    def _abandon_run(self, run_id: str) -> None:
        """End the run of a failing job FAILED: one bounded attempt; when MLflow does not answer, the
        run is kept in OPEN_RUNS and ended by the next training, and the job keeps its first error."""
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run_id:
                mlflow.end_run(status="FAILED")  # pops the fluent run stack before its one bounded request
            else:
                self.client.set_terminated(run_id, "FAILED")
        except (MlflowException, requests.RequestException) as exc:
            self._keep_open_runs([*self.open_runs(), run_id])
            logger.warning(
                "MLflow run %s not ended (%s: %s); the next training ends it FAILED",
                run_id,
                exc.__class__.__name__,
                str(exc)[:300],
            )
        else:
            logger.info("MLflow run %s ended FAILED", run_id)

    def log_candidate(self, record: RunRecord) -> Registered:
        import mlflow
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.models import infer_signature

        uri = self.settings.mlflow_tracking_uri
        self.end_open_runs()
        with mlflow_op(f"set experiment {self.settings.experiment_name}", uri):
            mlflow.set_experiment(self.settings.experiment_name)
        with mlflow_op("start run", uri):
            run_id = mlflow.start_run(run_name=record.run_name).info.run_id
        try:
            with mlflow_op("log run tags, params and metrics", uri):
                mlflow.set_tags(record.tags)
                mlflow.log_params(record.params)
                mlflow.log_metrics(record.metrics)
                if record.cv_rmse:
                    mlflow.log_metric("cv_rmse_best", min(record.cv_rmse.values()))
                    mlflow.log_dict(record.cv_rmse, "search/cv_rmse.json")
            with mlflow_op("log run inputs", uri):
                for item in record.inputs:
                    src: dict[str, Any] = {"source": item.source} if item.source else {}
                    mlflow.log_input(
                        from_pandas(item.frame, **src, targets=record.target, name=item.name),
                        context=item.context,
                    )
            with mlflow_op("log plots", uri):
                _log_plots(record.y_holdout, record.pred_holdout)
            with mlflow_op("log export artifacts", uri):
                mlflow.log_artifacts(str(record.artifacts_dir), artifact_path=EXPORT_ARTIFACTS)
            sample = record.input_example.head(50)
            with mlflow_op(f"log and register model {self.model_name}", uri):
                info = mlflow.sklearn.log_model(
                    record.pipeline,
                    name="model",
                    registered_model_name=self.model_name,
                    signature=infer_signature(sample, record.pipeline.predict(sample)),
                    input_example=record.input_example.head(3),
                    serialization_format="skops",
                    skops_trusted_types=skops_trusted_types(record.pipeline),
                    pip_requirements=model_requirements(),
                )
        except BaseException:
            self._abandon_run(run_id)
            raise
        try:
            with mlflow_op(f"end run {run_id}", uri):
                mlflow.end_run()  # the run leaves the fluent stack even when this fails
        except UpstreamError:
            self._keep_open_runs([*self.open_runs(), run_id])
            raise
        return Registered(run_id=run_id, version=int(info.registered_model_version), model_uri=info.model_uri)

    def record_run_decision(self, run_id: str, decision: GateDecision) -> None:
        with mlflow_op(f"record the gate decision on run {run_id}", self.settings.mlflow_tracking_uri):
            self.client.set_tag(run_id, "gate.promoted", str(decision.promoted).lower())
            self.client.set_tag(run_id, "gate.reason", decision.reason[: TAG_MAX - 100])
            self.client.log_dict(run_id, decision.model_dump(mode="json"), "gate/decision.json")

    def check_available(self) -> None:
        check_available(self.settings)

    def champion_version(self) -> int | None:
        return champion_version(self.client, self.model_name)

    def set_champion(self, version: int) -> None:
        set_champion(self.client, self.model_name, version)

    def version(self, version: int) -> VersionInfo:
        mv = get_version(self.client, self.model_name, version)
        return VersionInfo(
            version=version, run_id=mv.run_id, source=mv.source or "", tags=dict(mv.tags or {})
        )

    def set_version_tags(self, version: int, tags: dict[str, str]) -> None:
        set_version_tags(self.client, self.model_name, version, tags)

    def set_model_tag(self, key: str, value: str) -> None:
        set_model_tag(self.client, self.model_name, key, value)

    def load_model(self, version: int, tmp: Path) -> Any:
        return load_version_model(self.client, self.model_name, version, tmp)

    def export_artifacts(self, run_id: str, dst: Path) -> Path:
        return download(self.client, run_id, EXPORT_ARTIFACTS, dst)

    def _event_tags(self) -> list[tuple[str, str]]:
        tags = get_model_tags(self.client, self.model_name)
        return sorted((k, v) for k, v in tags.items() if k.startswith(EVENT_TAG_PREFIX))

    def promotion_events(self) -> list[PromotionEvent]:
        from .history import legacy_events

        rows = self._event_tags()
        if not rows:
            return legacy_events(self.model_name, get_model_tags(self.client, self.model_name))
        out: list[PromotionEvent] = []
        for key, value in rows:
            try:
                out.append(PromotionEvent.model_validate_json(value))
            except ValueError:
                logger.warning("registered model %s: tag %s is unreadable; skipped", self.model_name, key)
        return out

    def add_promotion_event(self, event: PromotionEvent) -> None:
        rows = self._event_tags()
        if not rows:  # a registry written before events had their own tags: move its history over first
            for n, old in enumerate(self.promotion_events(), 1):
                self.set_model_tag(f"{EVENT_TAG_PREFIX}{n:06d}", _event_tag(old))
            rows = self._event_tags()
        last = int(rows[-1][0][len(EVENT_TAG_PREFIX) :]) if rows else 0
        self.set_model_tag(f"{EVENT_TAG_PREFIX}{last + 1:06d}", _event_tag(event))

    def run_url(self, run_id: str) -> str:
        return run_url(self.settings, run_id)

    def versions(self) -> list[VersionInfo]:
        with mlflow_op(f"listing the versions of {self.model_name}", self.settings.mlflow_tracking_uri):
            found = self.client.search_model_versions(f"name='{self.model_name}'")
        return sorted(
            (
                VersionInfo(
                    version=int(mv.version),
                    run_id=mv.run_id,
                    source=mv.source or "",
                    tags=dict(mv.tags or {}),
                )
                for mv in found
            ),
            key=lambda v: v.version,
        )

    def find_runs(self, job_id: str | None = None, running: bool = False) -> list[RunInfo]:
        with mlflow_op(
            f"searching the runs of experiment {self.settings.experiment_name}",
            self.settings.mlflow_tracking_uri,
        ):
            exp = self.client.get_experiment_by_name(self.settings.experiment_name)
            if exp is None:
                return []
            where = [f"tags.`{JOB_TAG}` = '{job_id}'"] if job_id else []
            if running:
                where.append("attributes.status = 'RUNNING'")
            runs = self.client.search_runs(
                [exp.experiment_id], filter_string=" and ".join(where), max_results=1000
            )
        return [
            RunInfo(run_id=r.info.run_id, status=r.info.status, tags=dict(r.data.tags))
            for r in runs
            if r.data.tags.get(JOB_TAG)
        ]

    def end_run(self, run_id: str, status: str) -> None:
        with mlflow_op(f"ending run {run_id}", self.settings.mlflow_tracking_uri):
            self.client.set_terminated(run_id, status)
