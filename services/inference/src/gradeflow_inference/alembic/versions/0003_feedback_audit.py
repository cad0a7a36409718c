"""feedback_audit: every label replaced by a later one (POST /feedback with overwrite: true)

One row per replaced label: the request id, the value it had, the value that replaced it and when.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback_audit",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("old_actual", sa.Float, nullable=False),
        sa.Column("new_actual", sa.Float, nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_feedback_audit_request_id", "feedback_audit", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_audit_request_id", table_name="feedback_audit")
    op.drop_table("feedback_audit")
