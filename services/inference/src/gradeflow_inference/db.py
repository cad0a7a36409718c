"""The prediction log's tables, engine set-up and Alembic upgrade (imported off the cold-start path)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa

logger = logging.getLogger(__name__)

metadata = sa.MetaData()

# One row per POST /predict (a "batch"): the request's records as one JSON blob and the predictions as one
# JSON array. Per-record ids and request ids are derived (see predlog.py):
#   record id  = batch id * RECORD_ID_STRIDE + position   (position < n <= RECORD_ID_STRIDE)
#   request id = batch_key + f"{first_index + position:04x}"  (batch_key: 28 hex; first_index -1: the
#                request id is batch_key itself, for migrated rows with a non-standard request id)

prediction_batches = sa.Table(
    "prediction_batches",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("batch_key", sa.String(64), nullable=False, unique=True),
    sa.Column("first_index", sa.Integer, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("ts", sa.DateTime, nullable=False, index=True),  # naive UTC
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("records", sa.Text, nullable=False),  # JSON: [record, ...] or {"records": [record, ...]}
    sa.Column("predictions", sa.Text, nullable=False),  # JSON array of n numbers
    sa.Column("latency_ms", sa.Float, nullable=False),
    # progressive delivery (migration 0004): per record '0' champion / '1' candidate answered (NULL: all the
    # champion), and the candidate's version when any record went to it
    sa.Column("arms", sa.Text, nullable=True),
    sa.Column("candidate_version", sa.Integer, nullable=True),
)

# the challenger's predictions of a shadowed request (written off the request path), by batch key
shadow_predictions = sa.Table(
    "shadow_predictions",
    metadata,
    sa.Column("batch_key", sa.String(64), primary_key=True),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("predictions", sa.Text, nullable=False),  # JSON array of n numbers (null: not predicted)
    sa.Column("ts", sa.DateTime, nullable=False),  # naive UTC
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("actual", sa.Float, nullable=False),
    sa.Column("feedback_at", sa.DateTime, nullable=False),  # naive UTC
    # the request id split into its batch key and index (see above), for the join with prediction_batches
    sa.Column("batch_key", sa.String(64), nullable=False, index=True),
    sa.Column("idx", sa.Integer, nullable=False),
)

# every label replaced by a later one (POST /feedback with overwrite: true), oldest first
feedback_audit = sa.Table(
    "feedback_audit",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("old_actual", sa.Float, nullable=False),
    sa.Column("new_actual", sa.Float, nullable=False),
    sa.Column("at", sa.DateTime, nullable=False),  # naive UTC
)

MIGRATIONS = Path(__file__).resolve().parent / "alembic"


SQLITE_BUSY_MS = 30_000  # how long a SQLite connection waits for another writer's lock


def sqlite_pragmas(con: Any) -> None:
    """WAL and the cache settings every connection to a SQLite log uses."""
    cur = con.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    # the log only grows: keep its index pages in memory (64 MiB cache, reads memory-mapped)
    cur.execute("PRAGMA cache_size=-65536")
    cur.execute("PRAGMA mmap_size=268435456")
    cur.close()


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and its folder created."""
    if url.startswith("sqlite"):
        db = sa.engine.make_url(url).database
        if db and db != ":memory:":
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_MS / 1000, "check_same_thread": False}
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            sqlite_pragmas(dbapi_conn)

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


# Alembic's ``context`` and ``op`` are module-level proxies bound to the run in progress: two upgrades
# running at once in one process (two log writers starting together) would run one's DDL on the
# other's connection, and SQLite crashes the process when that connection is closed under it.
_UPGRADE_LOCK = threading.Lock()


def upgrade(engine: sa.Engine) -> None:
    """``alembic upgrade head`` programmatically, with the migrations shipped inside the package."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _UPGRADE_LOCK, engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
