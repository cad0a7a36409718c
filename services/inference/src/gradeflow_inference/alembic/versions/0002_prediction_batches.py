"""one log row per request (prediction_batches) instead of one per record; feedback keyed for the join

Every row of ``predictions`` becomes a one-record batch (its 32-hex request id is kept: batch key =
the first 28 hex digits, first_index = the last 4 read as hex; any other id is kept whole with
first_index -1). Feedback rows get the same split of their request id. Record ids change (batch id *
10000): a client paging by ``since_id`` from before the upgrade reads the migrated rows once more.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import re
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_HEX32 = re.compile(r"[0-9a-f]{32}")
_CHUNK = 1000


def _split(request_id: str) -> tuple[str, int]:
    if _HEX32.fullmatch(request_id):
        return request_id[:28], int(request_id[28:], 16)
    return request_id, -1


def _old_predictions() -> sa.TableClause:
    return sa.table(
        "predictions",
        sa.column("id", sa.Integer),
        sa.column("request_id", sa.String),
        sa.column("ts", sa.DateTime),
        sa.column("model_version", sa.Integer),
        sa.column("features", sa.Text),
        sa.column("prediction", sa.Float),
        sa.column("latency_ms", sa.Float),
    )


def _batches() -> sa.TableClause:
    return sa.table(
        "prediction_batches",
        sa.column("id", sa.Integer),
        sa.column("batch_key", sa.String),
        sa.column("first_index", sa.Integer),
        sa.column("n", sa.Integer),
        sa.column("ts", sa.DateTime),
        sa.column("model_version", sa.Integer),
        sa.column("records", sa.Text),
        sa.column("predictions", sa.Text),
        sa.column("latency_ms", sa.Float),
    )


def _feedback() -> sa.TableClause:
    return sa.table(
        "feedback",
        sa.column("request_id", sa.String),
        sa.column("batch_key", sa.String),
        sa.column("idx", sa.Integer),
    )


def upgrade() -> None:
    op.create_table(
        "prediction_batches",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("batch_key", sa.String(64), nullable=False),
        sa.Column("first_index", sa.Integer, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("ts", sa.DateTime, nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("records", sa.Text, nullable=False),
        sa.Column("predictions", sa.Text, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.UniqueConstraint("batch_key", name="uq_prediction_batches_batch_key"),
    )
    op.create_index("ix_prediction_batches_ts", "prediction_batches", ["ts"])
    op.add_column("feedback", sa.Column("batch_key", sa.String(64), nullable=False, server_default=""))
    op.add_column("feedback", sa.Column("idx", sa.Integer, nullable=False, server_default="-1"))
    conn = op.get_bind()
    old, new, fb = _old_predictions(), _batches(), _feedback()
    last = -1
    while True:  # copy in id order, chunk by chunk (ids of the new rows ascend the same way)
        rows = conn.execute(sa.select(old).where(old.c.id > last).order_by(old.c.id).limit(_CHUNK)).all()
        if not rows:
            break
        values: list[dict[str, Any]] = []
        for r in rows:
            key, idx = _split(r.request_id)
            values.append(
                {
                    "batch_key": key,
                    "first_index": idx,
                    "n": 1,
                    "ts": r.ts,
                    "model_version": r.model_version,
                    "records": f"[{r.features}]",
                    "predictions": orjson.dumps([r.prediction]).decode(),
                    "latency_ms": r.latency_ms,
                }
            )
        conn.execute(new.insert(), values)
        last = rows[-1].id
    ids = conn.execute(sa.select(fb.c.request_id)).scalars().all()
    for rid in ids:
        key, idx = _split(rid)
        conn.execute(fb.update().where(fb.c.request_id == rid).values(batch_key=key, idx=idx))
    op.create_index("ix_feedback_batch_key", "feedback", ["batch_key"])
    op.drop_index("ix_predictions_ts", table_name="predictions")
    op.drop_table("predictions")


def downgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("ts", sa.DateTime, nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("features", sa.Text, nullable=False),
        sa.Column("prediction", sa.Float, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.UniqueConstraint("request_id", name="uq_predictions_request_id"),
    )
    op.create_index("ix_predictions_ts", "predictions", ["ts"])
    conn = op.get_bind()
    old, new = _old_predictions(), _batches()
    last = -1
    while True:  # expand every batch into one row per record
        rows = conn.execute(sa.select(new).where(new.c.id > last).order_by(new.c.id).limit(100)).all()
        if not rows:
            break
        values: list[dict[str, Any]] = []
        for r in rows:
            data = orjson.loads(r.records)
            records = data["records"] if isinstance(data, dict) else data
            preds = orjson.loads(r.predictions)
            for i in range(r.n):
                rid = r.batch_key if r.first_index < 0 else f"{r.batch_key}{r.first_index + i:04x}"
                values.append(
                    {
                        "request_id": rid,
                        "ts": r.ts,
                        "model_version": r.model_version,
                        "features": orjson.dumps(records[i]).decode(),
                        "prediction": preds[i],
                        "latency_ms": r.latency_ms,
                    }
                )
        conn.execute(old.insert(), values)
        last = rows[-1].id
    op.drop_index("ix_feedback_batch_key", table_name="feedback")
    with op.batch_alter_table("feedback") as b:
        b.drop_column("idx")
        b.drop_column("batch_key")
    op.drop_index("ix_prediction_batches_ts", table_name="prediction_batches")
    op.drop_table("prediction_batches")
