"""The monitor's run history (SQLAlchemy; SQLite by default, PostgreSQL by URL). The monitor is its only writer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from .guards import FAILED, TRIGGERED, GuardState


class Base(DeclarativeBase):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


class Run(Base):
    """One check: window, verdicts, performance, the action taken and why, report files."""

    __tablename__ = "monitor_runs"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    trigger: Mapped[str] = mapped_column(sa.String(32), default="schedule")  # schedule | api | cli
    status: Mapped[str] = mapped_column(sa.String(32), default="running")  # ok | no_verdict | error
    model_version: Mapped[int | None]
    window_first_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    window_last_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    # prediction timestamps of the window's oldest and newest row (the time range a person reads)
    window_first_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    window_last_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    rows: Mapped[int] = mapped_column(default=0)
    reference_rows: Mapped[int] = mapped_column(default=0)
    # what the window was compared with: 'recent_labelled' (the rows the serving model was promoted on)
    # or 'training' (the export's sample of its training data)
    reference_set: Mapped[str | None] = mapped_column(sa.String(32))
    labelled_rows: Mapped[int] = mapped_column(default=0)
    new_labelled_rows: Mapped[int] = mapped_column(default=0)
    drift_share: Mapped[float | None]
    drift_share_threshold: Mapped[float | None]
    dataset_drift: Mapped[bool] = mapped_column(default=False)
    degraded: Mapped[bool] = mapped_column(default=False)
    mae: Mapped[float | None]
    rmse: Mapped[float | None]
    test_mae: Mapped[float | None]
    test_rmse: Mapped[float | None]
    baseline_mae: Mapped[float | None]  # what the window MAE was judged against
    baseline_set: Mapped[str | None] = mapped_column(sa.String(64))  # recent_labelled | base_holdout
    performance_json: Mapped[str] = mapped_column(sa.Text, default="{}")
    policy_json: Mapped[str] = mapped_column(sa.Text, default="{}")
    verdict_reason: Mapped[str] = mapped_column(sa.Text, default="")
    action: Mapped[str] = mapped_column(sa.String(32), default="none")
    action_code: Mapped[str] = mapped_column(sa.String(64), default="")
    action_reason: Mapped[str] = mapped_column(sa.Text, default="")
    retrain_job_id: Mapped[str | None] = mapped_column(sa.String(128))
    report_html: Mapped[str | None] = mapped_column(sa.Text)
    report_json: Mapped[str | None] = mapped_column(sa.Text)
    error: Mapped[str | None] = mapped_column(sa.Text)

    columns: Mapped[list[ColumnResult]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="ColumnResult.id", lazy="selectin"
    )

    @property
    def performance(self) -> dict[str, Any]:
        return dict(json.loads(self.performance_json or "{}"))

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]


class ColumnResult(Base):
    __tablename__ = "monitor_column_results"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("monitor_runs.id", ondelete="CASCADE"), index=True)
    column: Mapped[str] = mapped_column(sa.String(200))
    kind: Mapped[str] = mapped_column(sa.String(32))
    method: Mapped[str] = mapped_column(sa.String(64))
    score: Mapped[float]
    threshold: Mapped[float]
    drifted: Mapped[bool]
    noise_threshold: Mapped[float | None]
    floor: Mapped[float | None]

    run: Mapped[Run] = relationship(back_populates="columns")


class Store:
    """Thin repository over the run tables."""

    def __init__(self, url: str) -> None:
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = sa.create_engine(url, **kwargs)
        Base.metadata.create_all(self.engine)
        add_missing_columns(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._session() as s, s.begin():
            yield s

    def add(self, run: Run) -> Run:
        """Insert a new run (gets its id); the object stays usable detached (columns loaded)."""
        if "columns" not in run.__dict__:
            run.columns = []
        with self.session() as s:
            s.add(run)
        return run

    def save(self, run: Run) -> Run:
        with self.session() as s:
            merged = s.merge(run)
            s.flush()
            run.id = merged.id
        return self.get(run.id) or run

    def get(self, run_id: int) -> Run | None:
        with self.session() as s:
            return s.get(Run, run_id)

    def latest(self, finished_only: bool = True) -> Run | None:
        with self.session() as s:
            q = sa.select(Run)
            if finished_only:
                q = q.where(Run.finished_at.is_not(None))
            return s.scalars(q.order_by(Run.id.desc()).limit(1)).first()

    def list_runs(self, limit: int = 200) -> list[Run]:
        with self.session() as s:
            return list(s.scalars(sa.select(Run).order_by(Run.id.desc()).limit(limit)))

    def count(self) -> int:
        with self.session() as s:
            return int(s.scalar(sa.select(sa.func.count(Run.id))) or 0)

    def guard_state(self) -> GuardState:
        """Last successful trigger, and the failed attempts after it (survives restarts)."""
        with self.session() as s:
            last = s.scalars(
                sa.select(Run).where(Run.action == TRIGGERED).order_by(Run.id.desc()).limit(1)
            ).first()
            q = sa.select(Run).where(Run.action == FAILED)
            if last is not None:
                q = q.where(Run.id > last.id)
            failures = list(s.scalars(q.order_by(Run.id.desc())))
        return GuardState(
            last_trigger_at=_aware(last.finished_at or last.started_at) if last else None,
            last_job_id=last.retrain_job_id if last else None,
            failures=len(failures),
            last_failure_at=_aware(failures[0].finished_at or failures[0].started_at) if failures else None,
        )

    def report_paths_beyond(self, keep: int) -> list[tuple[int, str | None]]:
        """Runs older than the newest ``keep`` that still have an HTML report file."""
        with self.session() as s:
            rows = s.execute(
                sa.select(Run.id, Run.report_html)
                .where(Run.report_html.is_not(None))
                .order_by(Run.id.desc())
                .offset(keep)
            ).all()
        return [(int(r[0]), r[1]) for r in rows]

    def clear_html(self, run_id: int) -> None:
        with self.session() as s:
            s.execute(sa.update(Run).where(Run.id == run_id).values(report_html=None))


def add_missing_columns(engine: sa.Engine) -> list[str]:
    """Add the nullable columns a history written by an older monitor lacks (``create_all`` creates
    missing tables only). Every column added since the first release is nullable, so an old run
    simply has no value there. Returns ``table.column`` of what was added."""
    added: list[str] = []
    inspector = sa.inspect(engine)
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for col in table.columns:
            if col.name in have or not col.nullable or col.primary_key:
                continue
            kind = col.type.compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {kind}'))
            added.append(f"{table.name}.{col.name}")
    return added


def _aware(dt: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes: they were stored as UTC."""
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
