"""The request log: kiln_requests and kiln_samples.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kiln_requests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("route", sa.String(length=200), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("key_id", sa.String(length=200), nullable=True),
        sa.Column("n_inputs", sa.Integer(), nullable=False),
        sa.Column("n_tokens", sa.Integer(), nullable=True),
        sa.Column("sampled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_kiln_requests_ts", "kiln_requests", ["ts"])
    op.create_index("ix_kiln_requests_model_ts", "kiln_requests", ["model", "ts"])
    op.create_table(
        "kiln_samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("text_sha256", sa.String(length=64), nullable=False),
        sa.Column("text_chars", sa.Integer(), nullable=False),
        sa.Column("text_tokens", sa.Integer(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("emb_norm", sa.Float(), nullable=True),
        sa.Column("emb_mean", sa.Float(), nullable=True),
        sa.Column("emb_proj", sa.JSON(), nullable=True),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["request_id"], ["kiln_requests.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_kiln_samples_request_id", "kiln_samples", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_kiln_samples_request_id", table_name="kiln_samples")
    op.drop_table("kiln_samples")
    op.drop_index("ix_kiln_requests_model_ts", table_name="kiln_requests")
    op.drop_index("ix_kiln_requests_ts", table_name="kiln_requests")
    op.drop_table("kiln_requests")
