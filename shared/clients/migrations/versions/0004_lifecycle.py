"""The model lifecycle: artifacts, Triton versions, load state, managed Triton models and aliases.

Existing rows keep working: they get ``state = 'ready'`` and no Triton version (inference
sends none, as before), so models registered before this migration serve unchanged.

Revision ID: 0004_lifecycle
Revises: 0003_batch
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004_lifecycle"
down_revision = "0003_batch"
branch_labels = None
depends_on = None

STATES = "('awaiting_upload', 'pending', 'loading', 'ready', 'failed')"


def upgrade() -> None:
    op.add_column("models", sa.Column("triton_version", sa.Integer, nullable=True))
    op.add_column("models", sa.Column("state", sa.String(16), nullable=False, server_default="ready"))
    op.add_column("models", sa.Column("state_reason", sa.Text, nullable=True))
    op.add_column("models", sa.Column("artifact_uri", sa.Text, nullable=True))
    op.add_column("models", sa.Column("repository_uri", sa.Text, nullable=True))
    op.add_column("models", sa.Column("artifact_format", sa.String(16), nullable=True))
    op.add_column("models", sa.Column("artifact_sha256", sa.String(64), nullable=True))
    op.add_column("models", sa.Column("artifact_bytes", sa.BigInteger, nullable=True))
    op.create_check_constraint("ck_models_state", "models", f"state IN {STATES}")
    op.create_check_constraint(
        "ck_models_triton_version_positive", "models", "triton_version IS NULL OR triton_version > 0"
    )
    # A managed Triton version belongs to exactly one registry version.
    op.create_index(
        "uq_models_managed_triton_version",
        "models",
        ["triton_model", "triton_version"],
        unique=True,
        postgresql_where=sa.text("repository_uri IS NOT NULL"),
    )
    op.create_index("ix_models_name_status", "models", ["name", "status"])
    op.create_table(
        "triton_models",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("last_version", sa.Integer, nullable=False),
        sa.Column("config", sa.Text, nullable=True),
        sa.Column("files", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "model_aliases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("versions", JSONB, nullable=False),
        sa.Column("previous", JSONB, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("model_aliases")
    op.drop_table("triton_models")
    op.drop_index("ix_models_name_status", table_name="models")
    op.drop_index("uq_models_managed_triton_version", table_name="models")
    op.drop_constraint("ck_models_triton_version_positive", "models")
    op.drop_constraint("ck_models_state", "models")
    for column in (
        "artifact_bytes",
        "artifact_sha256",
        "artifact_format",
        "repository_uri",
        "artifact_uri",
        "state_reason",
        "state",
        "triton_version",
    ):
        op.drop_column("models", column)
