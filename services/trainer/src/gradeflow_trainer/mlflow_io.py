"""Everything the trainer asks of the MLflow server (over HTTP): runs, registry, aliases.

The champion is the registered model version carrying the ``champion`` alias (stages are
deprecated). Models are logged with the **skops** format (MLflow 3's default); loading one
back checks that every type skops reports as untrusted belongs to a short allow-list of
packages (scikit-learn, numpy, scipy) before ``skops.io.load``, so no MLflow-wide "allow
pickle" switch is needed and no arbitrary code runs from the artifact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import httpx

from gradeflow_shared.errors import ExportError, NotFound, UpstreamError

from .config import TrainerSettings

logger = logging.getLogger(__name__)

ALIAS = "champion"
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.")
TAG_MAX = 5000  # MLflow's limit on tag values


def configure(settings: TrainerSettings) -> None:
    """Point the fluent API (tracking AND registry) at the server."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in service logs
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)


def client(settings: TrainerSettings) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


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


def _upstream(exc: Exception, what: str) -> UpstreamError:
    return UpstreamError(f"MLflow: {what}: {exc.__class__.__name__}: {str(exc)[:500]}")


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
    cl.set_registered_model_alias(name, ALIAS, str(version))


def set_version_tags(cl: Any, name: str, version: int, tags: dict[str, Any]) -> None:
    for k, v in tags.items():
        value = v if isinstance(v, str) else json.dumps(v)
        cl.set_model_version_tag(name, str(version), k, value[:TAG_MAX])


def append_json_tag(cl: Any, name: str, version: int, key: str, item: dict[str, Any], keep: int = 20) -> None:
    """Append ``item`` to a JSON-list tag of a model version (keeping the last ``keep``)."""
    mv = get_version(cl, name, version)
    items: list[Any] = []
    with contextlib.suppress(ValueError, TypeError):
        items = list(json.loads((mv.tags or {}).get(key, "[]")))
    items.append(item)
    while len(items) > 1 and len(json.dumps(items[-keep:])) > TAG_MAX:
        keep -= 1
    cl.set_model_version_tag(name, str(version), key, json.dumps(items[-keep:]))


def set_model_tag(cl: Any, name: str, key: str, value: str) -> None:
    cl.set_registered_model_tag(name, key, value[:TAG_MAX])


def get_model_tags(cl: Any, name: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return dict(cl.get_registered_model(name).tags or {})
    except MlflowException as exc:
        if _missing(exc):
            return {}
        raise _upstream(exc, f"reading registered model {name}") from exc


def run_url(settings: TrainerSettings, run_id: str, experiment_id: str | None = None) -> str:
    if experiment_id is None:
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
