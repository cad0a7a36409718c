"""A real, small feature store for tests: Feast applied, a synthetic term seeded and materialized.

Made with the same code as ``gradeflow-features seed`` (``gradeflow_inference.online.cli.seed_store``);
``push`` adds students with chosen readings through Feast itself (history + online store).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from gradeflow_shared.synth import synthetic_spec

ADMIN_TOKEN = "admin-token-of-the-feature-store-tests"


@dataclass
class SeededStore:
    settings: Any  # InferenceSettings pointing at the store
    store: Any  # feast.FeatureStore
    ids: list[str]  # the seeded students

    def push(self, rows: list[dict[str, Any]]) -> None:
        from gradeflow_shared.features.store import push

        push(self.store, pd.DataFrame(rows))

    def online(self, ids: list[str]) -> pd.DataFrame:
        """What Feast itself answers for ``ids`` (the oracle the thin reader is checked against)."""
        from gradeflow_shared.features.store import online_features

        return online_features(self.store, ids)


def seeded_store(root: Path, students: int = 60, **settings: Any) -> SeededStore:
    """A store under ``root`` (DATA_DIR) holding ``students`` synthetic students (ids S-00001...)."""
    from gradeflow_inference.config import InferenceSettings
    from gradeflow_inference.online.cli import seed_store

    root.mkdir(parents=True, exist_ok=True)
    spec_path = root / "synthetic-term.json"
    spec_path.write_text(synthetic_spec(rows=students, seed=0).model_dump_json())
    cfg = InferenceSettings(data_dir=root, admin_token=ADMIN_TOKEN, **settings)
    store, hist = seed_store(cfg, str(spec_path))
    ids = sorted({str(i) for i in hist.labels["student_id"]})
    return SeededStore(settings=cfg, store=store, ids=ids)


def reading_time(days_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()
