"""rollout: which model answered each record (canary) and the challenger's shadow predictions

``prediction_batches.arms``: one character per record, '0' the champion answered, '1' the candidate
(NULL: the champion answered every record, as before); ``candidate_version``: the candidate's version when
any record went to it. ``shadow_predictions``: the challenger's predictions of a shadowed request, written
off the request path, joined to its batch by ``batch_key``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prediction_batches") as batch:
        batch.add_column(sa.Column("arms", sa.Text, nullable=True))
        batch.add_column(sa.Column("candidate_version", sa.Integer, nullable=True))
    op.create_table(
        "shadow_predictions",
        sa.Column("batch_key", sa.String(64), primary_key=True),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("predictions", sa.Text, nullable=False),
        sa.Column("ts", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("shadow_predictions")
    with op.batch_alter_table("prediction_batches") as batch:
        batch.drop_column("candidate_version")
        batch.drop_column("arms")
