"""The Feast repository of GradeFlow, as code: entity, feature views, sources.

Definitions live here (versioned with the project), not in a ``feature_store.yaml`` folder: the
store's configuration comes from the environment (``store.feature_store``) and these objects are
applied to its registry by ``store.apply``.

Two feature views split a dataset's columns by how often they change:

* ``student_profile``: slowly changing facts (age, school, family, previous grade, ...), recorded
  when a student enrols or a fact changes; a long TTL (a school year and a bit).
* ``student_activity``: readings that arrive during a term (attendance and absences weekly, study
  hours from surveys, term grades); a short TTL, so a stale reading is not served or trained on as
  if it were current.

Which columns are activity is declared by the dataset (``DatasetSpec.activity_columns``); every
other feature column is profile. Each view has a push source for new readings whose batch source
is the view's history table (parquet directory or PostgreSQL table).

This module imports feast at import time: import it only where the store is used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ..datasets import ColumnSpec
from .feast_env import quiet_feast_import

with quiet_feast_import():
    from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
    from feast.data_source import DataSource
    from feast.types import Bool, FeastType, Float64, Int64, String

ENTITY = "student"
JOIN_KEY = "student_id"
TIMESTAMP = "event_timestamp"
CREATED = "created"
PROFILE_VIEW = "student_profile"
ACTIVITY_VIEW = "student_activity"
VIEWS = (PROFILE_VIEW, ACTIVITY_VIEW)
PROFILE_TTL = timedelta(days=400)
ACTIVITY_TTL = timedelta(days=35)
TTLS = {PROFILE_VIEW: PROFILE_TTL, ACTIVITY_VIEW: ACTIVITY_TTL}

_FEAST_TYPES: dict[str, FeastType] = {"int": Int64, "float": Float64, "str": String, "bool": Bool}


def push_source_name(view: str) -> str:
    """Name of the push source that feeds ``view`` (``student_activity`` -> ``student_activity_push``)."""
    return f"{view}_push"


def history_table(view: str, project: str) -> str:
    """PostgreSQL table of a view's history (prefixed with the project: two platforms can share a db)."""
    return f"{project}_{view}"


@dataclass(frozen=True)
class Layout:
    """Where the history of each view lives: a parquet directory per view, or a PostgreSQL table."""

    project: str
    offline_dir: Path | None  # parquet: FEATURE_STORE_DIR/offline/<view>/part-*.parquet
    postgres: bool = False


def split_columns(columns: list[ColumnSpec], activity: list[str]) -> dict[str, list[ColumnSpec]]:
    """The dataset's feature columns by view: ``activity`` names go to the activity view, the rest to profile."""
    names = {c.name for c in columns}
    unknown = [a for a in activity if a not in names]
    if unknown:
        raise ValueError(f"activity columns not among the dataset's features: {', '.join(unknown)}")
    act = [c for c in columns if c.name in activity]
    prof = [c for c in columns if c.name not in activity]
    if not prof:
        raise ValueError("a dataset needs at least one profile column (not every column can be activity)")
    # a dataset without time-varying columns (no activity_columns) has a profile view only
    return {PROFILE_VIEW: prof, **({ACTIVITY_VIEW: act} if act else {})}


def _batch_source(view: str, layout: Layout) -> DataSource:
    if layout.postgres:
        from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

        return PostgreSQLSource(
            name=f"{view}_history",
            table=history_table(view, layout.project),
            timestamp_field=TIMESTAMP,
            created_timestamp_column=CREATED,
        )
    assert layout.offline_dir is not None
    return FileSource(
        name=f"{view}_history",
        path=str(layout.offline_dir / view),
        timestamp_field=TIMESTAMP,
        created_timestamp_column=CREATED,
    )


def student() -> Entity:
    """The entity every view is keyed by: one student, joined on ``student_id`` (a string)."""
    return Entity(
        name=ENTITY,
        join_keys=[JOIN_KEY],
        value_type=ValueType.STRING,
        description="A student, identified by the school's student id.",
    )


def definitions(columns: list[ColumnSpec], activity: list[str], layout: Layout) -> list:
    """Every Feast object of the repository for a dataset's columns: entity, push sources, feature views."""
    entity = student()
    objects: list = [entity]
    for view, cols in split_columns(columns, activity).items():
        batch = _batch_source(view, layout)
        push = PushSource(name=push_source_name(view), batch_source=batch)
        fv = FeatureView(
            name=view,
            entities=[entity],
            ttl=TTLS[view],
            schema=[Field(name=c.name, dtype=_FEAST_TYPES[c.dtype], description=c.description) for c in cols],
            source=push,
            online=True,
            tags={"gradeflow_version": view_version(view, cols)},
            description=(
                "Slowly changing facts about a student."
                if view == PROFILE_VIEW
                else "Readings that arrive during a term (attendance, absences, study hours, term grades)."
            ),
        )
        objects += [push, fv]
    return objects


def view_version(view: str, columns: list[ColumnSpec]) -> str:
    """A short hash of what a view means (name, TTL, features with type and bounds): changes when it does.

    Logged with each training run, so a model names the exact feature definitions it was trained on.
    """
    body = {
        "view": view,
        "ttl_seconds": int(TTLS[view].total_seconds()),
        "features": [c.model_dump(exclude={"description"}) for c in columns],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
