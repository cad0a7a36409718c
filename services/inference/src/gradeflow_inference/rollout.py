"""Progressive delivery on the serving side: the candidate next to the champion, shadow and canary.

``RolloutSlot.check`` runs on the model watcher's poll: it re-reads ``MODEL_DIR/rollout.json`` and the
``candidate`` link when their stat changes, loads the candidate with the same verification as
``current`` (``model.load_export``: sha256 of both files, ONNX session, finite test predictions, the
scikit-learn path checked against ONNX) and publishes one immutable ``View`` (one reference swap, like
``ModelManager.current``). The candidate is used only while the state is active and names the version
and run id of the candidate's manifest (``gradeflow_shared.rollout``); any mismatch serves the champion.

* **shadow**: the champion answers; a sampled share of requests is queued (bounded, never waited on) for
  the ``ShadowWorker`` thread, which predicts them with the candidate and stores the predictions against
  the same batch key. A full queue drops the request's shadow (counted), never the response.
* **canary**: records whose key (``student_id`` when the record has one, else the ``X-Rollout-Key``
  header, else the request id) falls in the canary share are answered by the candidate; a record the
  candidate cannot take (validation or prediction error) is answered by the champion and counted as a
  candidate error.

``ArmStats`` keeps per-arm requests, errors and recent prediction latencies for the monitor's abort rule.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradeflow_shared import rollout as ro
from gradeflow_shared.errors import ExportError

from .model import LoadedModel, _lower_priority, load_export
from .predlog.ids import request_ids
from .predlog.store import LogStore, ShadowRow

logger = logging.getLogger(__name__)

KEY_FIELD = "student_id"
KEY_HEADER = "x-rollout-key"
ARMS = ("champion", "candidate")
STORE_WAIT_SECONDS = 30.0
GATHER_SECONDS = 0.05  # the shadow thread waits this long for more requests before predicting a batch


@dataclass(frozen=True)
class View:
    """The rollout in force: its state and the verified candidate (never mutated; replaced as a whole)."""

    state: ro.RolloutState
    candidate: LoadedModel

    def as_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            "rollout_id": s.rollout_id,
            "stage": s.stage,
            "champion_version": s.champion_version,
            "candidate_version": s.candidate_version,
            "shadow_share": s.shadow_share,
            "canary_share": s.canary_share,
            "candidate_export": str(self.candidate.export_dir),
        }


class ArmStats:
    """Requests, errors and the last ``window`` prediction latencies of each arm, for one rollout stage."""

    def __init__(self, window: int = 2000) -> None:
        self.window = window
        self._lock = threading.Lock()
        self.reset("")

    def reset(self, key: str) -> None:
        with self._lock:
            self.key = key
            self.requests = dict.fromkeys(ARMS, 0)
            self.errors = dict.fromkeys(ARMS, 0)
            self.latency: dict[str, deque[float]] = {a: deque(maxlen=self.window) for a in ARMS}

    def add(self, arm: str, n: int, ms: float | None, errors: int = 0) -> None:
        with self._lock:
            self.requests[arm] += n
            self.errors[arm] += errors
            if ms is not None:
                self.latency[arm].append(ms)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {}
            for a in ARMS:
                lat = sorted(self.latency[a])
                out[a] = {
                    "records": self.requests[a],
                    "errors": self.errors[a],
                    "error_rate": self.errors[a] / self.requests[a] if self.requests[a] else None,
                    "latency_samples": len(lat),
                    "p50_ms": lat[len(lat) // 2] if lat else None,
                    "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
                }
            return out


class ShadowWorker:
    """Predicts shadowed requests with the candidate on its own thread and stores the predictions."""

    def __init__(self, store: LogStore | None, stats: ArmStats, queue_max: int, batch: int = 64) -> None:
        self.store = store
        self.stats = stats
        self.queue: queue.Queue[tuple[str, float, list[Any], View]] = queue.Queue(maxsize=queue_max)
        self.batch = batch
        self.done = 0
        self.dropped = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def offer(self, batch_key: str, records: list[Any], view: View) -> bool:
        """Queue one request for the shadow (never blocks); False (counted) when the queue is full."""
        try:
            self.queue.put_nowait((batch_key, time.time(), records, view))
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        _lower_priority()  # the shadow yields the CPU to the request path
        while not self._stop.is_set():
            try:
                first = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            # gather for a moment: under load one validation and one ONNX call serve many requests, and
            # the pause leaves the interpreter to the request path
            self._stop.wait(GATHER_SECONDS)
            items = [first]
            while len(items) < self.batch:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            rows = self.predict_many(items)
            # the log's database opens in the writer's thread at start: wait for it rather than drop rows
            if rows and self.store is not None and self.store.ready.wait(STORE_WAIT_SECONDS):
                try:
                    self.store.write_shadow(rows)
                except Exception:  # noqa: BLE001 - a shadow row is evidence, never worth the thread
                    logger.exception("shadow predictions not stored")

    def predict_many(self, items: list[tuple[str, float, list[Any], View]]) -> list[ShadowRow]:
        """One validation and one prediction for the requests of the same candidate (one by one when the
        candidate refuses the batch, so that one bad record costs only its own request's shadow)."""
        by_view: dict[int, list[tuple[str, float, list[Any], View]]] = {}
        for it in items:
            by_view.setdefault(id(it[3].candidate), []).append(it)
        rows: list[ShadowRow] = []
        for group in by_view.values():
            cand = group[0][3].candidate
            records = [r for it in group for r in it[2]]
            t0 = time.perf_counter()
            try:
                preds = list(cand.predict(cand.validator.validate(records, True)))
            except Exception:  # noqa: BLE001 - find the request(s) the candidate refuses
                rows += [r for r in (self.predict_one(*it) for it in group) if r is not None]
                continue
            ms = (time.perf_counter() - t0) * 1000.0 / len(group)
            k = 0
            for batch_key, ts, recs, _ in group:
                rows.append(ShadowRow(batch_key, ts, cand.version, preds[k : k + len(recs)]))
                k += len(recs)
                self.stats.add("candidate", len(recs), ms)
                self.done += 1
        return rows

    def predict_one(self, batch_key: str, ts: float, records: list[Any], view: View) -> ShadowRow | None:
        cand = view.candidate
        t0 = time.perf_counter()
        try:
            preds: list[float | None] = list(cand.predict(cand.validator.validate(records, True)))
        except Exception as exc:  # noqa: BLE001 - the candidate refusing a record is a candidate error
            self.failed += 1
            self.stats.add("candidate", len(records), None, errors=len(records))
            logger.debug("shadow prediction failed: %s", exc)
            return None
        self.stats.add("candidate", len(records), (time.perf_counter() - t0) * 1000.0)
        self.done += 1
        return ShadowRow(batch_key, ts, cand.version, preds)


class RolloutSlot:
    """Watches the candidate slot and routes requests while a rollout is active."""

    def __init__(
        self,
        model_dir: Path,
        store: LogStore | None,
        *,
        shadow_queue_max: int = 1000,
        tolerance: float = 0.05,
        verify_rows: int = 200,
        max_string_length: int = 200,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.view: View | None = None
        self.stats = ArmStats()
        self.shadow = ShadowWorker(store, self.stats, shadow_queue_max)
        self.tolerance = tolerance
        self.verify_rows = verify_rows
        self.max_string_length = max_string_length
        self.error: str | None = None
        self._key: Any = None
        self._refused: Any = None

    # -- watching (the model watcher's thread)
    def _stat_key(self) -> Any:
        parts: list[Any] = []
        for name in (ro.ROLLOUT_FILE, ro.CANDIDATE):
            try:
                st = os.lstat(self.model_dir / name)
                parts.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                parts.append(None)
        return tuple(parts)

    def check(self) -> None:
        """One poll: two lstat calls while nothing changed; else re-read the state and (re)load."""
        key = self._stat_key()
        if key == self._key:
            return
        self._key = key
        try:
            state = ro.read_state(self.model_dir)
        except ExportError as exc:
            state, self.error = None, str(exc)
        if state is None or not state.active:
            if self.view is not None:
                logger.info("rollout ended: serving the champion alone")
            self.view = None
            return
        export_dir = ro.resolve_candidate(self.model_dir)
        if export_dir is None:
            self.view, self.error = None, "rollout.json is active but MODEL_DIR/candidate is missing"
            return
        old = self.view
        if old is not None and old.candidate.export_dir == export_dir:
            self._publish(View(state, old.candidate))
            return
        ident = (str(export_dir), state.candidate_version, state.candidate_run_id)
        if ident == self._refused:
            return
        try:
            cand = load_export(
                export_dir,
                with_sklearn=True,
                tolerance=self.tolerance,
                verify_rows=self.verify_rows,
                max_string_length=self.max_string_length,
            )
            m = cand.manifest
            if (m.version, m.run_id) != (state.candidate_version, state.candidate_run_id):
                raise ExportError(
                    f"candidate export is v{m.version} run {m.run_id}, rollout.json names "
                    f"v{state.candidate_version} run {state.candidate_run_id}"
                )
        except Exception as exc:  # noqa: BLE001 - a bad candidate is refused; the champion serves alone
            self.view, self.error, self._refused = None, f"candidate refused: {exc}", ident
            logger.error("%s", self.error)
            return
        self.error = None
        self._publish(View(state, cand))

    def _publish(self, view: View) -> None:
        stage_key = f"{view.state.rollout_id}:{view.state.stage}"
        if stage_key != self.stats.key:
            self.stats.reset(stage_key)
        self.view = view
        logger.info(
            "rollout %s: candidate v%d in %s (shadow %.0f %%, canary %.0f %%)",
            view.state.rollout_id,
            view.state.candidate_version,
            view.state.stage,
            view.state.shadow_share * 100,
            view.state.canary_share * 100,
        )

    # -- the request path
    def route(
        self,
        view: View,
        records: list[Any],
        preds: list[float],
        batch_key: str,
        header_key: str | None,
        champion_ms: float,
        sent: list[Any] | None = None,
    ) -> tuple[list[float], str | None, int | None]:
        """Apply the rollout to one answered request: returns the predictions to answer with, the arms
        string to log (None: all champion) and the candidate version when any record went to it.
        ``sent``: the records as the client sent them (by-id records before the feature store filled them
        in), where the canary's sticky key is read."""
        state = view.state
        n = len(records)
        if state.stage == "shadow":
            self.stats.add("champion", n, champion_ms)
            if state.shadow_share >= 1.0 or ro.bucket(header_key or batch_key, "shadow") < state.shadow_share:
                self.shadow.offer(batch_key, records, view)
            return preds, None, None
        keys = self._keys(records if sent is None else sent, batch_key, header_key)
        picked = [i for i, k in enumerate(keys) if ro.to_candidate(k, state.canary_share)]
        self.stats.add("champion", n - len(picked), champion_ms if len(picked) < n else None)
        if not picked:
            return preds, None, None
        cand = view.candidate
        t0 = time.perf_counter()
        try:
            sub = [records[i] for i in picked]
            out = cand.predict(cand.validator.validate(sub, True))
        except Exception as exc:  # noqa: BLE001 - the champion answers what the candidate cannot
            self.stats.add("candidate", len(picked), None, errors=len(picked))
            logger.debug("canary: candidate failed, the champion answered: %s", exc)
            return preds, None, None
        self.stats.add("candidate", len(picked), (time.perf_counter() - t0) * 1000.0)
        answered = list(preds)
        arms = ["0"] * n
        for j, i in enumerate(picked):
            answered[i] = out[j]
            arms[i] = "1"
        return answered, "".join(arms), cand.version

    @staticmethod
    def _keys(records: list[Any], batch_key: str, header_key: str | None) -> list[str]:
        ids = request_ids(batch_key, len(records)) if header_key is None else []
        keys: list[str] = []
        for i, r in enumerate(records):
            sid = r.get(KEY_FIELD) if isinstance(r, dict) else None
            if sid is not None:
                keys.append(f"s:{sid}")
            elif header_key is not None:
                keys.append(f"h:{header_key}")
            else:
                keys.append(f"r:{ids[i]}")
        return keys

    def status(self) -> dict[str, Any]:
        view = self.view
        return {
            "active": view is not None,
            "rollout": view.as_dict() if view else None,
            "error": self.error,
            "arms": self.stats.as_dict(),
            "shadow": {
                "queued": self.shadow.queue.qsize(),
                "predicted": self.shadow.done,
                "dropped": self.shadow.dropped,
                "failed": self.shadow.failed,
            },
        }
