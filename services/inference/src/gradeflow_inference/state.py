"""The long-lived resources of one app instance (created in the lifespan, read by the routes)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gradeflow_shared.errors import ModelNotLoaded

from .config import InferenceSettings
from .metrics import Metrics
from .model import ModelManager
from .online.journal import JOURNAL_FILE, ReadingJournal
from .online.materializer import Materializer
from .online.reader import OnlineFeatures, open_online
from .predlog.store import LogStore
from .predlog.writer import LogWriter
from .rollout import RolloutSlot


class ServiceState:
    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.log = LogWriter(
            LogStore(settings.db_url()),
            batch_size=settings.log_batch_size,
            queue_max=settings.log_queue_max,
            flush_interval=settings.log_flush_interval,
            shutdown_timeout=settings.log_shutdown_timeout,
            durable_ack=settings.inference_log_enabled and settings.log_durable_ack,
            # the crash ledger counts the rows a killed process lost (predlog.ledger); none while logging is off
            ledger_dir=settings.service_dir("inference") / "log-ledger"
            if settings.inference_log_enabled
            else None,
        )
        self.metrics = Metrics(self.log_stats, self.feature_stats)
        # the candidate of a progressive rollout, checked on every poll of the model watcher
        self.rollout = RolloutSlot(
            settings.models_path,
            self.log.store if settings.inference_log_enabled else None,
            shadow_queue_max=settings.shadow_queue_max,
            tolerance=settings.verify_tolerance,
            verify_rows=settings.verify_rows,
            max_string_length=settings.max_string_length,
        )
        self.metrics.watch_rollout(self.rollout)
        self.manager = ModelManager(
            settings.models_path,
            interval=settings.reload_interval,
            tolerance=settings.verify_tolerance,
            verify_rows=settings.verify_rows,
            predict_path=settings.predict_path,
            max_string_length=settings.max_string_length,
            on_reload=self.metrics.on_reload,
            on_poll=self.rollout.check,
        )
        self.log_enabled = settings.inference_log_enabled
        self.durable_ack = settings.inference_log_enabled and settings.log_durable_ack
        self.max_records = settings.max_batch_records
        # the feature store's online values for POST /predict by student id (opened at the first lookup)
        self.online: OnlineFeatures = open_online(
            settings.feature_store_path, settings.feature_online_store_url, settings.feature_cache_students
        )
        # readings accepted by POST /readings, pushed into the store by the materializer thread
        self.journal = ReadingJournal(settings.feature_store_path / JOURNAL_FILE)
        self.materializer = Materializer(
            settings, self.journal, settings.feature_materialize_interval, settings.feature_push_interval
        )
        # the one inference thread for big batches (small ones run inline on the event loop)
        self.executor = ThreadPoolExecutor(
            max_workers=settings.inference_threads, thread_name_prefix="inference"
        )

    def feature_stats(self) -> dict[str, Any]:
        return self.materializer.stats()

    def log_stats(self) -> dict[str, Any]:
        s = self.log.stats()
        s["enabled"] = self.log_enabled
        return s

    def no_model(self) -> ModelNotLoaded:
        """The 503 while no export is loaded, naming the folder it waits for and the last refusal."""
        attempt = self.manager.last_attempt
        msg = f"no model is loaded yet: waiting for an export at {self.manager.model_dir}/current"
        if attempt is not None and not attempt.ok:
            msg += f" (last export refused: {attempt.error}; no valid export on disk to fall back to)"
        return ModelNotLoaded(msg, details={"last_reload_attempt": attempt.as_dict() if attempt else None})
