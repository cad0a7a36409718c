"""Students over time: dated feature rows and labels with their label times.

The feature store trains point-in-time: each label (a final grade) comes with the moment it
became known, and the features of a training row are what was known at that moment. A
``History`` holds the three tables that describe this, in the store's own column names:

* ``profile``: ``student_id``, ``event_timestamp`` and the slowly changing facts;
* ``activity``: ``student_id``, ``event_timestamp`` and the readings that arrive during a term;
* ``labels``: ``student_id``, ``event_timestamp`` (the label time) and the target.

The synthetic term (``synth.generate_term``) fills all three with a term of weekly readings.
Datasets without time (the shipped UCI files) become one snapshot per student (``snapshot``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd

STUDENT_ID = "student_id"
EVENT_TIMESTAMP = "event_timestamp"


@dataclass
class History:
    """Dated profile and activity rows plus labelled (student_id, label time) rows."""

    profile: pd.DataFrame
    activity: pd.DataFrame
    labels: pd.DataFrame
    target: str

    @property
    def students(self) -> int:
        return int(self.labels[STUDENT_ID].nunique())


def student_ids(n: int, prefix: str) -> list[str]:
    """``n`` stable ids ``<prefix>-00001`` ...: the same rows always get the same ids."""
    return [f"{prefix}-{i:05d}" for i in range(1, n + 1)]


def snapshot(
    X: pd.DataFrame,
    y: pd.Series,
    activity_columns: list[str],
    prefix: str,
    at: datetime,
    label_delay: timedelta = timedelta(hours=1),
) -> History:
    """One snapshot per row of a dataset without time: every feature dated ``at``, the label just after.

    Ids are synthesized from the row position (``<prefix>-00001`` ...), so loading the same file
    twice gives the same ids.
    """
    if at.tzinfo is None:
        raise ValueError("snapshot time must be timezone-aware")
    ids = student_ids(len(X), prefix)
    stamp = pd.Series([pd.Timestamp(at)] * len(X))
    base = pd.DataFrame({STUDENT_ID: ids, EVENT_TIMESTAMP: stamp})
    frame = pd.concat([base, X.reset_index(drop=True)], axis=1)
    profile_cols = [c for c in X.columns if c not in activity_columns]
    labels = pd.DataFrame(
        {
            STUDENT_ID: ids,
            EVENT_TIMESTAMP: stamp + pd.Timedelta(label_delay),
            y.name or "target": y.reset_index(drop=True),
        }
    )
    return History(
        profile=frame[[STUDENT_ID, EVENT_TIMESTAMP, *profile_cols]],
        activity=frame[[STUDENT_ID, EVENT_TIMESTAMP, *[c for c in activity_columns if c in X.columns]]],
        labels=labels,
        target=str(y.name or "target"),
    )


def day_start(now: datetime | None = None) -> datetime:
    """Midnight UTC of ``now``'s day (default today): a stable anchor for dating a generated history."""
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
