"""The retrain guards: when a drift or degradation verdict may call the trainer, and when not.

``decide`` is a pure function of its inputs (the clock is passed in), so every rule is unit-tested
with a fake clock. The monitor derives ``GuardState`` from its stored run history, so the guards
survive a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# action values stored on every run
NONE = "none"
NO_VERDICT = "no_verdict"
ALERT_ONLY = "alert_only"
SKIPPED = "retrain_skipped"
TRIGGERED = "retrain_triggered"
FAILED = "retrain_failed"
ERROR = "error"

# reason codes of skipped retrains (Prometheus label values)
SKIP_AUTO_OFF = "auto_retrain_off"
SKIP_WINDOW = "window_too_small"
SKIP_IN_FLIGHT = "in_flight"
SKIP_COOLDOWN = "cooldown"
SKIP_LABELLED = "few_new_labelled_rows"
SKIP_BACKOFF = "trainer_backoff"
SKIP_SUPERSEDED = "superseded"
SKIP_ROLLOUT = "rollout_in_progress"  # a challenger is under rollout: its decision comes first

ACTIVE_JOB_STATES = ("queued", "running")


@dataclass
class GuardState:
    """What the history says about earlier retrains."""

    last_trigger_at: datetime | None = None
    last_job_id: str | None = None
    failures: int = 0  # failed trigger attempts since the last successful one
    last_failure_at: datetime | None = None


@dataclass
class GuardInput:
    now: datetime
    need: bool  # drift or degradation holds
    why: str  # what holds (e.g. "dataset drift 0.21 >= 0.1")
    auto_retrain: bool
    rows: int
    min_window_rows: int
    new_labelled_rows: int
    min_labelled_rows: int
    cooldown_seconds: float
    job_state: str | None  # state of the last retrain job (None: none known)
    failure_backoff_seconds: float
    model_version: int | None = None  # the version this check judged
    promoted_version: int | None = None  # the version the last retrain job promoted (None: none)


@dataclass
class Decision:
    action: str
    reason: str
    code: str = ""  # skip reason code

    @property
    def trigger(self) -> bool:
        return self.action == TRIGGERED


def failure_wait(state: GuardState, base: float, cap: float) -> float:
    """Seconds to wait after ``state.failures`` consecutive failures: base, 2 base, 4 base ... <= cap."""
    if state.failures <= 0:
        return 0.0
    return min(base * (2 ** (state.failures - 1)), max(cap, base))


def decide(inp: GuardInput, state: GuardState) -> Decision:
    """Apply the guards in order; the first that holds explains the skip."""
    if not inp.need:
        return Decision(NONE, "no drift and no degradation")
    if not inp.auto_retrain:
        return Decision(ALERT_ONLY, f"{inp.why}; AUTO_RETRAIN is off", SKIP_AUTO_OFF)
    if inp.rows < inp.min_window_rows:
        return Decision(
            SKIPPED, f"{inp.why}; window has {inp.rows} rows < {inp.min_window_rows}", SKIP_WINDOW
        )
    if inp.job_state in ACTIVE_JOB_STATES or inp.job_state == "unknown":
        what = "state unknown (trainer unreachable)" if inp.job_state == "unknown" else inp.job_state
        return Decision(
            SKIPPED, f"{inp.why}; retrain in flight (job {state.last_job_id} {what})", SKIP_IN_FLIGHT
        )
    if (
        inp.promoted_version is not None
        and inp.model_version is not None
        and inp.promoted_version > inp.model_version
    ):
        # the job finished and promoted a newer version after this check resolved the serving one: the
        # window judged is the old model's; the new one is judged on its own traffic
        return Decision(
            SKIPPED,
            f"{inp.why}; retrain job {state.last_job_id} already promoted v{inp.promoted_version} "
            f"(this check judged v{inp.model_version})",
            SKIP_SUPERSEDED,
        )
    if state.last_trigger_at is not None:
        elapsed = (inp.now - state.last_trigger_at).total_seconds()
        if elapsed < inp.cooldown_seconds:
            left = inp.cooldown_seconds - elapsed
            return Decision(
                SKIPPED,
                f"{inp.why}; cooldown: last retrain {elapsed:.0f}s ago, {left:.0f}s left",
                SKIP_COOLDOWN,
            )
    if inp.new_labelled_rows < inp.min_labelled_rows:
        since = "since the last retrain" if state.last_trigger_at else "so far"
        return Decision(
            SKIPPED,
            f"{inp.why}; {inp.new_labelled_rows} new labelled rows {since} < {inp.min_labelled_rows}",
            SKIP_LABELLED,
        )
    if state.last_failure_at is not None and state.failures > 0:
        wait = failure_wait(state, inp.failure_backoff_seconds, inp.cooldown_seconds)
        elapsed = (inp.now - state.last_failure_at).total_seconds()
        if elapsed < wait:
            return Decision(
                SKIPPED,
                f"{inp.why}; trainer unreachable {state.failures}x, next attempt in {wait - elapsed:.0f}s",
                SKIP_BACKOFF,
            )
    return Decision(TRIGGERED, inp.why)
