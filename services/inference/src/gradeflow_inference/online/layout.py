"""What inference needs to know about the feature store, as a small JSON file (no Feast import to read it).

``online_layout.json`` in FEATURE_STORE_DIR is written each time the feature repository is applied
(``gradeflow-features apply``, also run by ``make up``): the Feast project, the entity's join key, every
feature view with its features, time to live and push source, and the SQLite online store file. Inference
reads it at start and again when it changes (a cheap ``stat`` per lookup), so a re-applied repository is
picked up without a restart.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LAYOUT_FILE = "online_layout.json"


@dataclass(frozen=True)
class ViewLayout:
    """One feature view as the online store holds it."""

    name: str
    features: tuple[str, ...]
    ttl_seconds: float | None  # None or 0: the values never expire
    push_source: str | None = None  # the push source that feeds it (readings), if any


@dataclass(frozen=True)
class Layout:
    project: str
    join_key: str
    views: tuple[ViewLayout, ...]
    sqlite_path: str | None = None  # relative to FEATURE_STORE_DIR unless absolute
    key_serialization_version: int = 3
    schema: tuple[
        dict[str, Any], ...
    ] = ()  # FeatureSpec fields of every stored feature (readings are checked)
    feature_view: dict[str, str] = field(default_factory=dict, compare=False)  # feature -> its view

    def __post_init__(self) -> None:
        if self.key_serialization_version != 3:
            raise ValueError(f"entity key serialization version {self.key_serialization_version} is not 3")
        for v in self.views:
            for f in v.features:
                self.feature_view.setdefault(f, v.name)

    def view(self, name: str) -> ViewLayout:
        return next(v for v in self.views if v.name == name)

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("feature_view")
        return json.dumps(d, indent=2)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Layout:
        views = tuple(
            ViewLayout(
                name=str(v["name"]),
                features=tuple(str(f) for f in v["features"]),
                ttl_seconds=float(v["ttl_seconds"]) if v.get("ttl_seconds") else None,
                push_source=v.get("push_source"),
            )
            for v in d["views"]
        )
        return Layout(
            project=str(d["project"]),
            join_key=str(d["join_key"]),
            views=views,
            sqlite_path=d.get("sqlite_path"),
            key_serialization_version=int(d.get("key_serialization_version", 3)),
            schema=tuple(d.get("schema", ())),
        )


def layout_of(store: Any, columns: list[Any]) -> Layout:
    """The layout of an applied Feast ``FeatureStore`` (its registry and online store config) with the
    dataset ``columns`` (ColumnSpec) as the readings' schema. Feast is not imported here: the caller has
    the store."""
    views = tuple(
        ViewLayout(
            name=fv.name,
            features=tuple(f.name for f in fv.features),
            ttl_seconds=fv.ttl.total_seconds() if fv.ttl else None,
            push_source=getattr(fv.stream_source, "name", None),
        )
        for fv in sorted(store.list_feature_views(), key=lambda v: v.name)
    )
    online = store.config.online_store
    root = Path(str(store.config.repo_path))
    sqlite_path = None
    if getattr(online, "type", "") == "sqlite":
        p = Path(online.path)
        sqlite_path = str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
    stored = {f for v in views for f in v.features}
    schema = tuple(
        {**c.model_dump(exclude={"description"}), "nullable": True} for c in columns if c.name in stored
    )
    return Layout(
        project=store.project,
        join_key=next(iter(store.list_entities())).join_key,
        views=views,
        sqlite_path=sqlite_path,
        key_serialization_version=store.config.entity_key_serialization_version,
        schema=schema,
    )


def write_layout(store_dir: Path, layout: Layout) -> Path:
    """Write the layout atomically (a reader never sees half a file)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    path = store_dir / LAYOUT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(layout.to_json())
    os.replace(tmp, path)
    return path


def read_layout(store_dir: Path) -> Layout | None:
    """The layout in ``store_dir``, or None when the repository was never applied there."""
    path = store_dir / LAYOUT_FILE
    try:
        return Layout.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
