"""Promotion history: who was champion when, and why (MLflow keeps no alias history).

**One source of truth**: the registry's list of promotion events (``Registry.promotion_events``;
on MLflow one registered-model tag per event, ``gradeflow.promotion.<n>``). Every change of the
champion alias appends one ``PromotionEvent`` there (``record``), and ``write_views`` derives every
other view from that list, in one place:

* ``DATA_DIR/trainer/promotions.jsonl``: the whole list, rewritten atomically (``GET /history``
  reads it, so it answers while the registry is down);
* the model-version tag ``gradeflow.promotions``: the events of that version (JSON list);
* the registered-model tag ``gradeflow.champion_history``: a compact list of every event.

Rollback replays the events as a stack of champions: ``promote`` and ``gate`` push a version,
``rollback`` pops the top; the rollback target is the entry below the top.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from gradeflow_shared.contracts import PromotionEvent

from .registry import TAG_MAX, Registry

logger = logging.getLogger(__name__)

FILE = "promotions.jsonl"
HISTORY_TAG = "gradeflow.champion_history"  # registered-model tag: compact list of every event
EVENTS_TAG = "gradeflow.promotions"  # model-version tag: the events of that version
VERSION_EVENTS_KEEP = 20


class History:
    """The history file: a view of the registry's events (written only by ``write_views``)."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / FILE

    def write(self, events: list[PromotionEvent]) -> None:
        text = "".join(e.model_dump_json() + "\n" for e in events)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

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


def champion_stack(events: list[PromotionEvent]) -> list[int]:
    """The champions in order, after undoing rollbacks (top = current champion)."""
    stack: list[int] = []
    for ev in events:
        if ev.action.startswith("rollout_") and ev.action != "rollout_promote":
            continue  # a rollout's start, stages and refusals leave the champion where it was
        if ev.action == "rollback" and stack:
            stack.pop()
        if not stack or stack[-1] != ev.version:
            stack.append(ev.version)
    return stack


def rollback_target(events: list[PromotionEvent]) -> int | None:
    stack = champion_stack(events)
    return stack[-2] if len(stack) >= 2 else None


def make_event(
    model_name: str,
    version: int,
    previous: int | None,
    action: str,
    reason: str,
    event_id: str | None = None,
    at: datetime | None = None,
) -> PromotionEvent:
    return PromotionEvent(
        at=at or datetime.now(UTC),
        model_name=model_name,
        version=version,
        previous_version=previous,
        action=action,  # type: ignore[arg-type]
        reason=reason,
        event_id=event_id,
    )


def to_compact(events: list[PromotionEvent], keep: int = 60) -> str:
    """A short JSON form for the registered-model tag (limited to 5000 characters)."""
    rows = [[e.at.isoformat(timespec="seconds"), e.action, e.version, e.previous_version] for e in events]
    while rows:
        text = json.dumps(rows[-keep:])
        if len(text) <= TAG_MAX:
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


def legacy_events(model_name: str, model_tags: dict[str, str]) -> list[PromotionEvent]:
    """The events of a registry written before each event had its own tag (its compact tag)."""
    tag = model_tags.get(HISTORY_TAG)
    return from_compact(model_name, tag) if tag else []


def version_events_tag(events: list[PromotionEvent], version: int) -> str:
    """The JSON list of ``version``'s events (the last ones that fit a tag)."""
    mine = [json.loads(e.model_dump_json()) for e in events if e.version == version]
    keep = VERSION_EVENTS_KEEP
    while keep > 1 and len(json.dumps(mine[-keep:])) > TAG_MAX:
        keep -= 1
    return json.dumps(mine[-keep:])


def write_views(
    registry: Registry, history: History, events: list[PromotionEvent], version: int | None = None
) -> None:
    """Derive every view of the history from ``events`` (the registry's list): the history file, the
    compact registered-model tag and ``version``'s tag (the only version tag an event changes)."""
    history.write(events)
    if version is not None:
        registry.set_version_tags(version, {EVENTS_TAG: version_events_tag(events, version)})
    if events:  # no event, maybe no registered model yet: nothing to tag
        registry.set_model_tag(HISTORY_TAG, to_compact(events))


def record_once(registry: Registry, history: History, event: PromotionEvent) -> PromotionEvent:
    """Append ``event`` to the source of truth unless an event with its ``event_id`` is already there
    (a repair finishing an interrupted promotion never duplicates it), then refresh the views from
    it. Returns the event as the registry holds it."""
    events = registry.promotion_events()
    same = [e for e in events if event.event_id and e.event_id == event.event_id]
    if same:
        event = same[0]
    else:
        registry.add_promotion_event(event)
        events = registry.promotion_events()
    write_views(registry, history, events, event.version)
    return event
