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


class Metrics:
    def __init__(self, log_stats: Callable[[], dict[str, Any]]) -> None:
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
        self.registry.register(_LogCollector(log_stats))  # type: ignore[arg-type]

    def on_reload(self, ok: bool) -> None:
        self.reloads.labels("loaded" if ok else "refused").inc()

    def watch_rollout(self, slot: Any) -> None:
        """Export the rollout's counters (``_RolloutCollector``) at scrape time."""
        self.registry.register(_RolloutCollector(slot))  # type: ignore[arg-type]


# ---------------------------------------------------------------- progressive delivery (rollout.RolloutSlot)
class _RolloutCollector:
    """Shadow predictions (by challenger version), shadows dropped, and records per rollout arm."""

    def __init__(self, slot: Any) -> None:
        self._slot = slot

    def collect(self) -> Iterable[Metric]:
        slot = self._slot
        view = slot.view
        shadow = CounterMetricFamily(
            "inference_shadow_predictions",
            "Requests predicted by the challenger off the request path (shadow stage)",
            labels=["model_version"],
        )
        if view is not None:
            shadow.add_metric([str(view.candidate.version)], slot.shadow.done)
        yield shadow
        yield CounterMetricFamily(
            "inference_shadow_dropped",
            "Shadow predictions dropped because the shadow queue was full (the answer is never affected)",
            value=slot.shadow.dropped,
        )
        arms = CounterMetricFamily(
            "inference_rollout_records",
            "Records per rollout arm in the current stage (champion | candidate)",
            labels=["arm"],
        )
        errors = CounterMetricFamily(
            "inference_rollout_errors",
            "Records the arm could not predict in the current stage (the champion answered them)",
            labels=["arm"],
        )
        for arm, st in slot.stats.as_dict().items():
            arms.add_metric([arm], st["records"])
            errors.add_metric([arm], st["errors"])
        yield arms
        yield errors

    def describe(self) -> Iterable[Metric]:
        return []


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
