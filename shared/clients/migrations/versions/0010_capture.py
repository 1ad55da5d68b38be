"""Payload capture settings: ``capture_settings`` (one row per model name, or per model name and alias):
the share of requests captured (0-100 %) and the input fields redacted before a record is written.

Revision ID: 0010_capture
Revises: 0009_audit_log
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010_capture"
down_revision = "0009_audit_log"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "capture_settings",
        sa.Column("model_name", sa.String(128), primary_key=True),
        # '' : every request of the model; else the alias (or version) the caller names
        sa.Column("alias", sa.String(64), primary_key=True, server_default=""),
        sa.Column("sample_percent", sa.Float, nullable=False),
        sa.Column("redact", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("updated_by", sa.String(128), nullable=False, server_default=""),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("sample_percent >= 0 AND sample_percent <= 100", name="ck_capture_settings_percent"),
    )


def downgrade() -> None:
    op.drop_table("capture_settings")
