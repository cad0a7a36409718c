"""Prometheus metrics of one app instance (own registry, so several apps can live in one test process).

Per model version: every /predict request is counted and timed under the ``model_version`` that answered
it and its ``arm`` (``champion`` today; a rollout adds others), predicted records likewise, and the live
error of each version on the labels that arrive through /feedback (``inference_live_abs_error``: count
and sum, so ``rate(_sum)/rate(_count)`` is the MAE over any window; ``inference_live_mae``: since start).

Label values are bounded: routes and methods come from fixed sets, versions and arms from the models
this process loaded; nothing from the request body or query ever becomes a label.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

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
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CHAMPION = "champion"
CANDIDATE = "candidate"  # a canary answer by the challenger
# the ASGI scope key through which the /predict handler tells the middleware which model answered
SERVED = "gradeflow.served"

Served = tuple[int, str]  # (model version, arm)


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
        yield CounterMetricFamily(
            "inference_log_replayed_on_start",
            "Prediction log rows a killed process had acknowledged with LOG_DURABLE_ACK, replayed from its "
            "journal at start",
            value=s.get("replayed_on_start", 0),
        )

    def describe(self) -> Iterable[Metric]:
        return []


class _LiveError:
    """Absolute errors of the predictions that received a label, by model version and arm.

    Updated when /feedback stores a first label (never on /predict); read at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}  # (version, arm) -> labels counted
        self._sums: dict[tuple[str, str], float] = {}  # (version, arm) -> sum of |error|

    def add(self, version: int, arm: str, abs_errors: Iterable[float]) -> None:
        n, total = 0, 0.0
        for e in abs_errors:
            n += 1
            total += e
        if n:
            key = (str(version), arm)
            with self._lock:
                self._counts[key] = self._counts.get(key, 0) + n
                self._sums[key] = self._sums.get(key, 0.0) + total

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            items = [(k, n, self._sums[k]) for k, n in self._counts.items()]
        labels = ["model_version", "arm"]
        summary = SummaryMetricFamily(
            "inference_live_abs_error",
            "Absolute error of labelled predictions (first label of each), by the model version that "
            "predicted; rate(_sum)/rate(_count) is the live MAE over a window",
            labels=labels,
        )
        mae = GaugeMetricFamily(
            "inference_live_mae",
            "Mean absolute error of the labelled predictions of each model version since this process started",
            labels=labels,
        )
        for key, n, total in items:
            summary.add_metric(list(key), count_value=n, sum_value=total)
            mae.add_metric(list(key), total / n)
        yield summary
        yield mae


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
        yield GaugeMetricFamily(
            "inference_feature_schedule_owner",
            "1 in the one process (of those sharing the feature store folder) that runs the scheduled "
            "materialization, else 0",
            value=1.0 if s.get("owner") else 0.0,
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
        served = ["model_version", "arm"]  # empty on routes that no model answers
        self.requests = Counter(
            "inference_requests",
            "HTTP requests by route, method, status and (for /predict) the model version and arm that answered",
            ["route", "method", "status", *served],
            registry=self.registry,
        )
        self.errors = Counter(
            "inference_request_errors",
            "HTTP requests answered 4xx or 5xx, by route, status class and (for /predict) model version and arm",
            ["route", "class", *served],
            registry=self.registry,
        )
        self.latency = Histogram(
            "inference_request_latency_seconds",
            "HTTP request latency by route, status and (for /predict) model version and arm",
            ["route", "status", *served],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "inference_predictions",
            "Predicted records by model version and arm",
            served,
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
        self.live_error = _LiveError()
        self.registry.register(_LogCollector(log_stats))  # type: ignore[arg-type]
        self.registry.register(self.live_error)  # type: ignore[arg-type]
        # label children by their label values: a dict read instead of ``labels()`` (a lock and a tuple
        # check per call) on the request path; every key part is bounded (see the module docstring)
        self._http: dict[tuple[str, str, int, int | None, str], tuple[Any, Any, Any]] = {}
        self._predicted: dict[Served, Any] = {}
        self.readings = Counter(
            "inference_feature_readings_accepted",
            "Readings accepted by POST /readings (committed to the journal)",
            registry=self.registry,
        )
        if feature_stats is not None:
            self.registry.register(_FeatureCollector(feature_stats))  # type: ignore[arg-type]

    def on_reload(self, ok: bool) -> None:
        self.reloads.labels("loaded" if ok else "refused").inc()

    def observe_errors(self, version: int, abs_errors: list[float], arm: str = CHAMPION) -> None:
        """Add the absolute errors of newly labelled predictions of ``version`` (called by /feedback)."""
        self.live_error.add(version, arm, abs_errors)

    def predicted(self, version: int, arm: str = CHAMPION) -> Any:
        """The counter of records predicted by ``version`` in ``arm`` (``.inc(n)`` it)."""
        child = self._predicted.get((version, arm))
        if child is None:
            child = self._predicted[(version, arm)] = self.predictions.labels(str(version), arm)
        return child

    def observe_request(
        self, route: str, method: str, status: int, served: Served | None, seconds: float
    ) -> None:
        """Count and time one request: one counter increment and one histogram observation (plus one
        error increment for a 4xx/5xx)."""
        version, arm = served if served is not None else (None, "")
        key = (route, method, status, version, arm)
        children = self._http.get(key)
        if children is None:
            v, code = ("" if version is None else str(version)), str(status)
            err = None
            if status >= 400:
                err = self.errors.labels(route, f"{status // 100}xx", v, arm)
            children = self._http[key] = (
                self.requests.labels(route, method, code, v, arm),
                self.latency.labels(route, code, v, arm),
                err,
            )
        count, hist, err = children
        count.inc()
        hist.observe(seconds)
        if err is not None:
            err.inc()

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
    """Pure ASGI middleware: counts requests and observes latency by route and status (cheap per call).

    The model version and arm of a /predict answer come from the scope (``SERVED``, set by the handler)."""

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
                method = scope.get("method", "")
                m.observe_request(
                    path if path in ROUTES else "other",
                    method if method in METHODS else "other",
                    status,
                    scope.get(SERVED),
                    time.perf_counter() - start,
                )
