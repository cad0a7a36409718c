"""A progressive rollout on the model volume: the candidate slot, ``rollout.json`` and sticky routing.

Layout next to ``current`` (see ``manifest``)::

    MODEL_DIR/
      current   -> versions/v000003-...   (the champion: answers every request outside the canary share)
      candidate -> versions/v000004-...   (the challenger under rollout; absent when none)
      rollout.json                         (``RolloutState``: the stage, both versions, shares, decision)

The trainer is the only writer (``write_state`` is atomic: temp file, fsync, rename, fsync of the
folder; ``point_candidate`` swaps a symlink like ``manifest.point_current``). Inference uses the
candidate only while ``rollout.json`` is active AND names the version and run id the candidate's
manifest holds, so every half-finished change (a link without a state, a state without a link, a
stale link) serves the champion alone.

Routing is a pure function of a key (``bucket``): the same student (or header, or request id) always
lands in the same arm for a given share, in every process and after a restart.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from .errors import ExportError
from .manifest import _fsync_dir, point_link, resolve_current, write_file_atomic

ROLLOUT_FILE = "rollout.json"
CANDIDATE = "candidate"
Stage = Literal["shadow", "canary"]
Decision = Literal["promoted", "rolled_back", "aborted", "expired"]
MODES = ("direct", "shadow", "canary", "shadow+canary")


def planned_stages(mode: str) -> list[Stage]:
    """The stages a ``ROLLOUT`` mode goes through before ``full`` (``direct``: none)."""
    if mode not in MODES:
        raise ValueError(f"ROLLOUT must be one of {', '.join(MODES)}, got {mode!r}")
    return [s for s in ("shadow", "canary") if s in mode.split("+")]  # type: ignore[misc]


class RolloutState(BaseModel):
    """``MODEL_DIR/rollout.json``: one rollout, active until ``decision`` is set."""

    rollout_id: str
    model_name: str
    champion_version: int | None
    champion_run_id: str | None
    candidate_version: int
    candidate_run_id: str
    stage: Stage
    stages: list[Stage] = Field(description="The planned stages, in order, before the promotion.")
    shadow_share: float = Field(ge=0.0, le=1.0)
    canary_share: float = Field(ge=0.0, le=1.0)
    started_at: datetime
    stage_started_at: datetime
    expires_at: datetime
    decision: Decision | None = None
    decided_at: datetime | None = None
    reason: str = ""
    recorded: bool = Field(
        default=False, description="The decision's history event and MLflow tags are written."
    )
    evidence: dict[str, Any] = Field(default_factory=dict, description="The monitor's latest evaluation.")

    @property
    def active(self) -> bool:
        return self.decision is None

    @classmethod
    def begin(
        cls,
        rollout_id: str,
        model_name: str,
        champion: tuple[int | None, str | None],
        candidate: tuple[int, str],
        stages: list[Stage],
        shadow_share: float = 1.0,
        canary_share: float = 0.1,
        max_age_seconds: float = 7 * 86400.0,
        reason: str = "",
    ) -> RolloutState:
        """A new rollout in its first stage (``champion``, ``candidate``: version and run id)."""
        at = now()
        return cls(
            rollout_id=rollout_id,
            model_name=model_name,
            champion_version=champion[0],
            champion_run_id=champion[1],
            candidate_version=candidate[0],
            candidate_run_id=candidate[1],
            stage=stages[0],
            stages=stages,
            shadow_share=shadow_share,
            canary_share=canary_share,
            started_at=at,
            stage_started_at=at,
            expires_at=at + timedelta(seconds=max_age_seconds),
            reason=reason,
        )


def read_state(model_dir: Path) -> RolloutState | None:
    """The rollout of ``model_dir`` (None: none ever, or an unreadable file: the champion serves alone)."""
    try:
        return RolloutState.model_validate_json((Path(model_dir) / ROLLOUT_FILE).read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    except OSError as exc:
        raise ExportError(f"unreadable {ROLLOUT_FILE} in {model_dir}: {exc}") from exc


def write_state(model_dir: Path, state: RolloutState) -> None:
    """Write ``rollout.json`` atomically (a reader sees the old or the new state, never a mix)."""
    write_file_atomic(model_dir, ROLLOUT_FILE, state.model_dump_json(indent=2))


def resolve_candidate(model_dir: Path) -> Path | None:
    """The folder ``candidate`` points to, or None."""
    return resolve_current(model_dir, CANDIDATE)


def point_candidate(model_dir: Path, export_dir: Path) -> None:
    """Swap ``candidate`` to ``export_dir`` atomically (a new symlink renamed over the old one)."""
    point_link(model_dir, CANDIDATE, export_dir)


def clear_candidate(model_dir: Path) -> bool:
    """Remove the ``candidate`` link (the export stays under ``versions/``); True when there was one."""
    link = Path(model_dir) / CANDIDATE
    try:
        link.unlink()
    except FileNotFoundError:
        return False
    _fsync_dir(Path(model_dir))
    return True


def bucket(key: str, salt: str = "") -> float:
    """A stable number in [0, 1) for ``key`` (blake2b: the same in every process, unlike ``hash``)."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def to_candidate(key: str, share: float, salt: str = "canary") -> bool:
    """Sticky canary routing: True when ``key`` falls in the candidate's ``share``. Raising the share
    only moves keys from the champion to the candidate (a key never flips back and forth)."""
    return share > 0.0 and bucket(key, salt) < share


def now() -> datetime:
    return datetime.now(UTC)
