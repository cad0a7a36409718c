"""Where a check's data comes from: the current window (inference over HTTP) and the reference (the export).

Window rule: the current window is the newest ``window_size`` logged predictions made by the model
version that serves now (``model_version == manifest.version`` of ``MODEL_DIR/current``). Rows of
older versions never count, so after a promotion the window starts empty and fills with the new
model's predictions: the new model is not judged (nor retrained) on its predecessor's traffic.

Pulling: ``GET /predictions?since_id=`` pages forward (ids ascend). The source remembers the rows
it has seen (at most ``window_size`` per version) and the last id, so each check only pulls what is
new; the first check after a start pages through the log once. Feedback arrives after the
prediction, so the labels of the window are refreshed on every check with
``GET /predictions?labelled=true&since_id=<first id of the window - 1>``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradeflow_shared.contracts import LOG_META_COLUMNS, LoggedPrediction, PredictionPage
from gradeflow_shared.errors import ExportError
from gradeflow_shared.http import ServiceClient
from gradeflow_shared.manifest import (
    REFERENCE_FILE,
    Manifest,
    read_manifest,
    read_reference_records,
    resolve_current,
)

logger = logging.getLogger(__name__)

META_COLUMNS = list(LOG_META_COLUMNS)


@dataclass
class ServingModel:
    export_dir: Path
    manifest: Manifest
    reference: pd.DataFrame
    recent_reference: pd.DataFrame | None = None  # the recent labelled rows the promotion was decided on


def load_serving_model(model_dir: Path) -> ServingModel:
    """Resolve ``current`` once and read the manifest and reference sample from that directory."""
    export_dir = resolve_current(Path(model_dir))
    if export_dir is None:
        raise ExportError(f"no model exported in {model_dir} yet (no 'current')")
    manifest = read_manifest(export_dir)
    ref_path = export_dir / REFERENCE_FILE
    if not ref_path.is_file():
        raise ExportError(f"export {export_dir.name} has no {REFERENCE_FILE}")
    recent = None
    if "reference_recent" in manifest.files:
        try:
            recent = reference_frame(export_dir, manifest, key="reference_recent")
        except ExportError as exc:
            logger.warning(
                "export %s: recent reference unusable (%s): the base one is used", export_dir.name, exc
            )
    return ServingModel(export_dir, manifest, reference_frame(export_dir, manifest), recent)


def reference_frame(export_dir: Path, manifest: Manifest, key: str = "reference") -> pd.DataFrame:
    """An export's reference sample as a frame (features typed per the manifest, plus the target)."""
    records = read_reference_records(export_dir, manifest, key=key)
    columns = [*manifest.feature_names, manifest.target]
    return pd.DataFrame.from_records(records, columns=columns).fillna(value=np.nan)


def read_csv_frame(path: Path, manifest: Manifest | None = None) -> pd.DataFrame:
    """Read a CSV of records given on the command line, categorical values kept as strings."""
    dtype: dict[str, Any] = {}
    if manifest is not None:
        dtype = {f.name: str for f in manifest.features if f.kind == "categorical"}
    return pd.read_csv(path, dtype=dtype, keep_default_na=True)


def rows_to_frame(rows: list[LoggedPrediction]) -> pd.DataFrame:
    """Logged predictions as a frame: the feature columns plus the META_COLUMNS."""
    if not rows:
        return pd.DataFrame(columns=META_COLUMNS)
    feats = pd.DataFrame([r.features for r in rows])
    meta = pd.DataFrame(
        {
            "id": [r.id for r in rows],
            "request_id": [r.request_id for r in rows],
            "ts": [r.ts for r in rows],
            "model_version": [r.model_version for r in rows],
            "prediction": [r.prediction for r in rows],
            "actual": [r.actual for r in rows],
            "feedback_at": [r.feedback_at for r in rows],
        }
    )
    feats = feats.drop(columns=[c for c in META_COLUMNS if c in feats.columns])
    return pd.concat([feats.reset_index(drop=True), meta], axis=1)


class InferenceWindow:
    """Incremental reader of the inference prediction log (one per monitor process)."""

    def __init__(self, client: ServiceClient, window_size: int, page_size: int = 1000) -> None:
        self.client = client
        self.window_size = window_size
        self.page_size = page_size
        self._rows: OrderedDict[int, LoggedPrediction] = OrderedDict()  # serving version's rows, by id
        self._version: int | None = None
        self._last_id = 0
        self._lock = threading.Lock()

    def _pages(self, since_id: int, labelled: bool = False) -> list[LoggedPrediction]:
        out: list[LoggedPrediction] = []
        cursor: int | None = since_id
        while cursor is not None:
            params: dict[str, Any] = {"since_id": cursor, "limit": self.page_size}
            if labelled:
                params["labelled"] = "true"
            page = PredictionPage.model_validate(self.client.get("/predictions", params=params))
            out.extend(page.items)
            if not page.items or page.next_since_id is None or page.next_since_id <= cursor:
                break
            cursor = page.next_since_id
        return out

    def fetch(self, model_version: int) -> pd.DataFrame:
        """The window for ``model_version`` (newest ``window_size`` rows), labels refreshed."""
        with self._lock:
            if self._version != model_version:
                # a new serving version: the window starts again (older versions' rows never count)
                self._rows.clear()
                self._version = model_version
            for row in self._pages(self._last_id):
                self._last_id = max(self._last_id, row.id)
                if row.model_version == model_version:
                    self._rows[row.id] = row
            while len(self._rows) > self.window_size:
                self._rows.popitem(last=False)
            if self._rows:
                first = next(iter(self._rows))
                for row in self._pages(first - 1, labelled=True):
                    if row.id in self._rows:
                        self._rows[row.id] = row
            return rows_to_frame(list(self._rows.values()))
