"""Request ids on logged requests, and kiln_feedback (labels that arrive after the request).

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("kiln_requests") as batch:
        batch.add_column(sa.Column("request_id", sa.String(length=128), nullable=True))
    op.create_index("ix_kiln_requests_request_id", "kiln_requests", ["request_id"])
    op.create_table(
        "kiln_feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_kiln_feedback_request_id", "kiln_feedback", ["request_id"])
    op.create_index("ix_kiln_feedback_ts", "kiln_feedback", ["ts"])


def downgrade() -> None:
    op.drop_index("ix_kiln_feedback_ts", table_name="kiln_feedback")
    op.drop_index("ix_kiln_feedback_request_id", table_name="kiln_feedback")
    op.drop_table("kiln_feedback")
    op.drop_index("ix_kiln_requests_request_id", table_name="kiln_requests")
    with op.batch_alter_table("kiln_requests") as batch:
        batch.drop_column("request_id")
