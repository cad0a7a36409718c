"""Training data from the feature store (FEATURE_SOURCE=feast): point-in-time correct rows.

The dataset named by DATASET is seeded into the store once (a term of dated readings for the
synthetic data, one snapshot per row for a CSV; ``gradeflow_shared.features.seed``); every
training run then asks the store for the features as they were at each label's time
(``get_historical_features``), never the latest ones. The run logs which feature views, in which
versions, the rows came from (``lineage``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gradeflow_shared.datasets import ColumnSpec, DatasetSpec, load_spec

from .config import TrainerSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreTrainingSet:
    spec: DatasetSpec  # the store's spec (the synthetic term for 'synthetic')
    X: pd.DataFrame
    y: pd.Series
    columns: list[ColumnSpec]
    lineage: dict[str, Any]


def store_training_set(settings: TrainerSettings, dataset: str | None = None) -> StoreTrainingSet:
    """Seed the store with the dataset if needed, then join its labels point-in-time."""
    from gradeflow_shared.features import store as fs
    from gradeflow_shared.features.seed import seed, store_spec, training_frame

    base = load_spec(
        dataset or settings.dataset, data_root=Path(settings.dataset_root) if settings.dataset_root else None
    )
    spec = store_spec(base)
    store = fs.feature_store(settings)
    hist = seed(store, spec)
    columns = list(spec.columns or [])
    X, y = training_frame(store, hist, [c.name for c in columns])
    lost = int(X.isna().all(axis=1).sum())
    if lost:
        logger.warning(
            "feature store: %d of %d label rows found no feature at their label time", lost, len(X)
        )
    logger.info("feature store: %d point-in-time training rows for %s", len(X), spec.name)
    return StoreTrainingSet(spec=spec, X=X, y=y, columns=columns, lineage=fs.lineage(store))


def lineage_params(lineage: dict[str, Any] | None) -> dict[str, Any]:
    """MLflow params naming the feature views used (version, TTL, feature count) and the stores."""
    if not lineage:
        return {"feature_source": "dataset"}
    out: dict[str, Any] = {
        "feature_source": "feast",
        "feature_project": lineage["project"],
        "feature_offline_store": lineage["offline_store"],
        "feature_online_store": lineage["online_store"],
    }
    for name, view in lineage["views"].items():
        out[f"feature_view.{name}.version"] = view["version"]
        out[f"feature_view.{name}.ttl_seconds"] = view["ttl_seconds"]
        out[f"feature_view.{name}.features"] = ",".join(view["features"])[:500]
    return out
