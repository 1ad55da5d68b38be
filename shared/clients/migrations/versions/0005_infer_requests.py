"""Async inference requests (``Prefer: respond-async``): one row per accepted request, its result or error
and its callback, kept REQUEST_RETENTION_S (``expires_at``, indexed for the purge).

Revision ID: 0005_infer_requests
Revises: 0004_lifecycle
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005_infer_requests"
down_revision = "0004_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "infer_requests",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("route_key", sa.String(256), nullable=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("http_status", sa.Integer, nullable=True),
        sa.Column("result", JSONB, nullable=True),
        sa.Column("error", JSONB, nullable=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("trace_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("callback_url", sa.Text, nullable=True),
        sa.Column("callback_status", sa.String(16), nullable=True),
        sa.Column("callback_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("callback_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("callback_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed')", name="ck_infer_requests_status"),
        sa.CheckConstraint("protocol IN ('v1', 'v2')", name="ck_infer_requests_protocol"),
        sa.CheckConstraint(
            "callback_status IS NULL OR callback_status IN ('pending', 'queued', 'delivered', 'failed')",
            name="ck_infer_requests_callback_status",
        ),
    )
    op.create_index("ix_infer_requests_expires_at", "infer_requests", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_infer_requests_expires_at", table_name="infer_requests")
    op.drop_table("infer_requests")
