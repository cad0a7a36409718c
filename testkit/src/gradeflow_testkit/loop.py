"""Drive the closed loop over HTTP: traffic, feedback, waiting for drift, retrain and reload.

Used by ``make demo`` (which tells the story in the terminal) and by the end-to-end tests
(which assert on it), against local processes or the containers alike: only URLs are needed.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pandas as pd


@dataclass
class Urls:
    trainer: str
    inference: str
    monitor: str
    mlflow: str
    token: str = ""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def to_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready records (NaN -> None, numpy scalars -> Python)."""
    out = []
    for row in df.to_dict(orient="records"):
        rec: dict[str, Any] = {}
        for k, v in row.items():
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, float) and math.isnan(v) or v is pd.NA:
                v = None
            rec[str(k)] = v
        out.append(rec)
    return out


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float,
    interval: float = 1.0,
    on_tick: Callable[[float], None] | None = None,
) -> Any:
    """Poll ``check()`` until it returns something truthy; TimeoutError names ``what``."""
    t0 = time.monotonic()
    last_exc: Exception | None = None
    while time.monotonic() - t0 < timeout:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            last_exc = exc
        if on_tick:
            on_tick(time.monotonic() - t0)
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout:.0f}s waiting for {what}"
        + (f" (last error: {last_exc})" if last_exc else "")
    )


@dataclass
class PredictionOutcome:
    request_ids: list[str]
    predictions: list[float]
    version: int


def predict(client: httpx.Client, records: list[dict[str, Any]]) -> PredictionOutcome:
    r = client.post("/predict", json={"records": records})
    r.raise_for_status()
    body = r.json()
    items = body["predictions"]
    return PredictionOutcome(
        [i["request_id"] for i in items], [float(i["prediction"]) for i in items], int(body["model_version"])
    )


def feedback(
    client: httpx.Client,
    request_ids: Iterable[str],
    actuals: Iterable[float],
    headers: dict[str, str] | None = None,
) -> int:
    """POST the true outcomes; ``headers`` carry the labeller's (or admin's) bearer token (``Urls.auth``)."""
    items = [{"request_id": r, "actual": float(a)} for r, a in zip(request_ids, actuals, strict=True)]
    accepted = 0
    for i in range(0, len(items), 1000):
        r = client.post("/feedback", json={"items": items[i : i + 1000]}, headers=headers)
        r.raise_for_status()
        accepted += int(r.json()["accepted"])
    return accepted


def send_labelled(
    client: httpx.Client,
    df: pd.DataFrame,
    target: str,
    batch: int = 100,
    with_feedback: bool = True,
    headers: dict[str, str] | None = None,
) -> tuple[list[float], set[int]]:
    """Predict every row of ``df`` in batches, then send its true outcome; returns predictions, versions."""
    preds: list[float] = []
    versions: set[int] = set()
    features = df.drop(columns=[target])
    for i in range(0, len(df), batch):
        part = features.iloc[i : i + batch]
        out = predict(client, to_records(part))
        preds.extend(out.predictions)
        versions.add(out.version)
        if with_feedback:
            feedback(client, out.request_ids, df[target].iloc[i : i + batch].tolist(), headers)
    return preds, versions


def mae(pred: Iterable[float], actual: Iterable[float]) -> float:
    p, a = np.asarray(list(pred), dtype=float), np.asarray(list(actual), dtype=float)
    return float(np.mean(np.abs(p - a)))


@dataclass
class BackgroundTraffic:
    """Single-record predictions in a loop from a few threads, counting every failure."""

    base_url: str
    records: list[dict[str, Any]]
    threads: int = 2
    pause: float = 0.02
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    versions: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self, offset: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as c:
            i = offset
            while not self._stop.is_set():
                rec = self.records[i % len(self.records)]
                i += self.threads
                try:
                    r = c.post("/predict", json=rec)
                    ok = r.status_code == 200
                    with self._lock:
                        self.sent += 1
                        if ok:
                            self.versions.add(int(r.json()["model_version"]))
                        else:
                            self.failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.sent += 1
                        self.failures.append(f"{exc.__class__.__name__}: {exc}")
                self._stop.wait(self.pause)

    def start(self) -> BackgroundTraffic:
        for k in range(self.threads):
            t = threading.Thread(target=self._run, args=(k,), daemon=True, name=f"traffic-{k}")
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=35)
