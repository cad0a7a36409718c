"""Fill an empty feature store with a dataset's history, once, and recall it afterwards.

The first time a dataset meets a store, ``seed`` dates its history so that it ends today (a term
of readings for the synthetic data, one snapshot for a file without time), writes it to the
offline store, records the anchor date and materializes the latest values for serving. Later
calls find the record and rebuild the same history (same ids, dates and labels) without writing
anything: the labels the trainer joins on stay those the store holds features for.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pandas as pd

from ..datasets import DatasetSpec, load_dataset
from ..history import History, day_start, snapshot
from ..synth import LABEL_DELAY, TERM_WEEKS, generate_term, timeline_spec
from . import store as fs

if TYPE_CHECKING:
    from feast import FeatureStore

logger = logging.getLogger(__name__)

SEEDED = "seeded.json"


def store_spec(spec: DatasetSpec) -> DatasetSpec:
    """The spec the store holds for a training dataset: the synthetic term for 'synthetic', else itself."""
    if spec.path is None:
        return timeline_spec(
            students=spec.rows, seed=spec.seed, scenario=spec.scenario, severity=spec.severity
        )
    return spec


def spec_key(spec: DatasetSpec) -> str:
    """What identifies a dataset's history (name, generator arguments, columns): 16 hex digits."""
    body = spec.model_dump(include={"name", "rows", "seed", "scenario", "severity", "columns", "target"})
    if spec.path is not None:
        body.pop("rows"), body.pop("seed"), body.pop("scenario"), body.pop("severity")
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def history_of(spec: DatasetSpec, anchor: datetime) -> History:
    """The dataset's history ending at ``anchor``: a generated term, or one snapshot per CSV row."""
    if spec.path is None:
        start = anchor - timedelta(weeks=TERM_WEEKS) - LABEL_DELAY
        return generate_term(
            spec.rows, seed=spec.seed, scenario=spec.scenario, severity=spec.severity, start=start
        )
    X, y, _ = load_dataset(spec)
    return snapshot(X, y, spec.activity_columns, prefix=spec.name, at=anchor - timedelta(days=1))


# ------------------------------------------------------------------ the record of what was seeded
def _records(store: FeatureStore, add: tuple[str, datetime] | None = None) -> dict[str, str]:
    """The seeded datasets ({key: anchor}), after recording ``add`` when given.

    PostgreSQL offline store: a table next to the history; parquet: ``seeded.json`` in the store folder.
    """
    if fs._layout(store).postgres:
        from sqlalchemy import text

        table = f"{store.project}_seeded"
        with fs.postgres(store) as conn:
            conn.execute(text(f'CREATE TABLE IF NOT EXISTS "{table}" (key text PRIMARY KEY, anchor text)'))
            if add is not None:
                conn.execute(
                    text(f'INSERT INTO "{table}" (key, anchor) VALUES (:k, :a) ON CONFLICT DO NOTHING'),
                    {"k": add[0], "a": add[1].isoformat()},
                )
            return {k: a for k, a in conn.execute(text(f'SELECT key, anchor FROM "{table}"'))}
    path = fs.store_root(store) / SEEDED
    records = json.loads(path.read_text()) if path.is_file() else {}
    if add is not None:
        records[add[0]] = add[1].isoformat()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(records, indent=1))
        tmp.replace(path)
    return records


def seed(store: FeatureStore, spec: DatasetSpec, now: datetime | None = None) -> History:
    """The history of ``spec`` in ``store``: written (and materialized) the first time, recalled after.

    ``spec`` is the store's spec (``store_spec``). Applies the definitions first (idempotent).
    """
    fs.apply(store, spec)
    key = spec_key(spec)
    records = _records(store)
    if key in records:
        anchor = datetime.fromisoformat(records[key])
        return history_of(spec, anchor)
    anchor = day_start(now or datetime.now(UTC))
    hist = history_of(spec, anchor)
    from .repo import ACTIVITY_VIEW, PROFILE_VIEW

    views = fs.view_columns(store)
    n_profile = fs.write_history(store, PROFILE_VIEW, hist.profile)
    n_activity = fs.write_history(store, ACTIVITY_VIEW, hist.activity) if ACTIVITY_VIEW in views else 0
    _records(store, add=(key, anchor))
    fs.materialize(store, end=max(datetime.now(UTC), anchor))
    logger.info(
        "feature store: seeded %s (%d students: %d profile rows, %d activity rows, ending %s)",
        spec.name,
        hist.students,
        n_profile,
        n_activity,
        anchor.date(),
    )
    return hist


def training_frame(store: FeatureStore, hist: History, features: list[str]) -> tuple[pd.DataFrame, pd.Series]:
    """Point-in-time training rows for the history's labels: (X in ``features`` order, y)."""
    joined = fs.historical_features(store, hist.labels, features)
    X = joined[features].reset_index(drop=True)
    for c in X.columns:  # nullable integers (pd.NA) as float64 with NaN, as the flat loader gives them
        if str(X[c].dtype) in ("Int64", "Int32"):
            X[c] = X[c].astype("float64")
    y = joined[hist.target].astype(float).reset_index(drop=True)
    y.name = hist.target
    return X, y
