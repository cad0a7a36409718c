"""Promotion history: who was champion when, and why (MLflow keeps no alias history).

Every change of the champion alias is one ``PromotionEvent``, appended as a JSON line to
``DATA_DIR/trainer/promotions.jsonl`` and mirrored into MLflow (a JSON-list tag on the
model version and a compact list on the registered model), so the history survives the
loss of either store. Rollback replays the events as a stack of champions: ``promote``
and ``gate`` push a version, ``rollback`` pops the top; the rollback target is the entry
below the top.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from gradeflow_shared.contracts import PromotionEvent

logger = logging.getLogger(__name__)

FILE = "promotions.jsonl"
_lock = threading.Lock()


class History:
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / FILE

    def append(self, event: PromotionEvent) -> None:
        line = event.model_dump_json() + "\n"
        with _lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())

    def events(self, model_name: str | None = None) -> list[PromotionEvent]:
        if not self.path.is_file():
            return []
        out: list[PromotionEvent] = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                ev = PromotionEvent.model_validate_json(line)
            except ValueError:
                logger.warning("%s line %d is unreadable; skipped", self.path, n)
                continue
            if model_name is None or ev.model_name == model_name:
                out.append(ev)
        return out

    def seed(self, events: list[PromotionEvent]) -> None:
        """Write events recovered from MLflow when the local file is missing."""
        for ev in events:
            self.append(ev)


def champion_stack(events: list[PromotionEvent]) -> list[int]:
    """The champions in order, after undoing rollbacks (top = current champion)."""
    stack: list[int] = []
    for ev in events:
        if ev.action == "rollback" and stack:
            stack.pop()
        if not stack or stack[-1] != ev.version:
            stack.append(ev.version)
    return stack


def rollback_target(events: list[PromotionEvent]) -> int | None:
    stack = champion_stack(events)
    return stack[-2] if len(stack) >= 2 else None


def make_event(
    model_name: str, version: int, previous: int | None, action: str, reason: str
) -> PromotionEvent:
    return PromotionEvent(
        at=datetime.now(UTC),
        model_name=model_name,
        version=version,
        previous_version=previous,
        action=action,  # type: ignore[arg-type]
        reason=reason,
    )


def to_compact(events: list[PromotionEvent], keep: int = 60) -> str:
    """A short JSON form for the registered-model tag (limited to 5000 characters)."""
    rows = [[e.at.isoformat(timespec="seconds"), e.action, e.version, e.previous_version] for e in events]
    while rows:
        text = json.dumps(rows[-keep:])
        if len(text) <= 5000:
            return text
        keep -= 5
    return "[]"


def from_compact(model_name: str, text: str) -> list[PromotionEvent]:
    try:
        rows = json.loads(text)
        return [
            PromotionEvent(
                at=datetime.fromisoformat(r[0]),
                action=r[1],
                version=int(r[2]),
                previous_version=r[3],
                model_name=model_name,
                reason="recovered from MLflow tag",
            )
            for r in rows
        ]
    except (ValueError, TypeError, IndexError, KeyError):
        return []
