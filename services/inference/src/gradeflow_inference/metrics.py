"""Prometheus metrics of one app instance (own registry, so several apps can live in one test process)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

ROUTES = frozenset(
    {
        "/predict",
        "/feedback",
        "/predictions",
        "/model",
        "/health",
        "/ready",
        "/metrics",
        "/docs",
        "/openapi.json",
        "/readings",
        "/features/materialize",
    }
)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _LogCollector:
    """Reads the prediction log's counters at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        s = self._stats()
        yield GaugeMetricFamily(
            "inference_log_queue_depth",
            "Prediction log rows queued or being written",
            value=s.get("queue_depth", 0),
        )
        yield CounterMetricFamily(
            "inference_log_dropped",
            "Prediction log rows dropped (queue full or db down)",
            value=s.get("dropped", 0),
        )
        yield CounterMetricFamily(
            "inference_log_written", "Prediction log rows written", value=s.get("written", 0)
        )
        yield CounterMetricFamily(
            "inference_log_lost_on_crash",
            "Prediction log rows queued by a process that was killed before writing them (counted at start "
            "from the crash ledger; an upper bound)",
            value=s.get("lost_on_crash", 0),
        )

    def describe(self) -> Iterable[Metric]:
        return []


class _FeatureCollector:
    """The feature store's ingestion and materialization at scrape time (journal counts, last runs)."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        s = self._stats()
        yield GaugeMetricFamily(
            "inference_feature_ingest_lag_seconds",
            "Age of the oldest accepted reading not yet in the online store (0: all online)",
            value=s["lag_seconds"],
        )
        yield GaugeMetricFamily(
            "inference_feature_readings_pending",
            "Accepted readings not yet in the online store",
            value=s["pending"],
        )
        yield CounterMetricFamily(
            "inference_feature_readings_pushed", "Readings pushed into the feature store", value=s["pushed"]
        )
        last = s["last_materialized_at"]
        yield GaugeMetricFamily(
            "inference_feature_materialized_timestamp_seconds",
            "When the last materialization (history -> online store) finished (0: none since start)",
            value=last or 0.0,
        )
        runs = CounterMetricFamily(
            "inference_feature_materializations", "Materializations by result", labels=["result"]
        )
        for result, n in s["materializations"].items():
            runs.add_metric([result], n)
        yield runs

    def describe(self) -> Iterable[Metric]:
        return []


class Metrics:
    def __init__(
        self,
        log_stats: Callable[[], dict[str, Any]],
        feature_stats: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "inference_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "inference_request_latency_seconds",
            "HTTP request latency by route and status",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "inference_predictions",
            "Predicted records by model version",
            ["model_version"],
            registry=self.registry,
        )
        self.unseen = Counter(
            "inference_unseen_categories",
            "Records with a category value not seen in training, by feature (predicted via the encoder's "
            "unknown handling)",
            ["feature"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "inference_model_reloads",
            "Model load attempts by result (loaded | refused)",
            ["result"],
            registry=self.registry,
        )
        self.readings = Counter(
            "inference_feature_readings_accepted",
            "Readings accepted by POST /readings (committed to the journal)",
            registry=self.registry,
        )
        self.registry.register(_LogCollector(log_stats))  # type: ignore[arg-type]
        if feature_stats is not None:
            self.registry.register(_FeatureCollector(feature_stats))  # type: ignore[arg-type]

    def on_reload(self, ok: bool) -> None:
        self.reloads.labels("loaded" if ok else "refused").inc()


class MetricsMiddleware:
    """Pure ASGI middleware: counts requests and observes latency by route and status (cheap per call)."""

    def __init__(self, app: Any, metrics_getter: Callable[[], Metrics | None]) -> None:
        self.app = app
        self.metrics_getter = metrics_getter

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def _send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            m = self.metrics_getter()
            if m is not None:
                path = scope.get("path", "")
                route = path if path in ROUTES else "other"
                code = str(status)
                m.requests.labels(route, scope.get("method", ""), code).inc()
                m.latency.labels(route, code).observe(time.perf_counter() - start)
