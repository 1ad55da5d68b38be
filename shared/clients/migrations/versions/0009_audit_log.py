"""The append-only audit log: ``audit_log`` (``shared.audit``), one row per admin action or platform decision.

Revision ID: 0009_audit_log
Revises: 0008_key_expiry
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009_audit_log"
down_revision = "0008_key_expiry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("actor_key_id", sa.String(36), nullable=True),
        sa.Column("actor_name", sa.String(128), nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("before", JSONB, nullable=True),
        sa.Column("after", JSONB, nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("trace_id", sa.String(64), nullable=True),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_model_id", "audit_log", ["model", "id"])
    op.create_index("ix_audit_log_target_id", "audit_log", ["target", "id"])
    op.create_index("ix_audit_log_actor_id", "audit_log", ["actor_key_id", "id"])


def downgrade() -> None:
    op.drop_table("audit_log")
