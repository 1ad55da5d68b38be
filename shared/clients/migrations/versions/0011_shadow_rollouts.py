"""Shadow versions and rollout gates: ``model_aliases.shadow`` ({version: percent} mirrored after the answer)
and ``alias_rollouts`` (one automatic rollout per alias: its policy, its current step, the counter snapshot
its step is measured from, and its state).

Revision ID: 0011_shadow_rollouts
Revises: 0010_capture
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0011_shadow_rollouts"
down_revision = "0010_capture"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("model_aliases", sa.Column("shadow", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")))
    op.create_table(
        "alias_rollouts",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("baseline", sa.String(32), nullable=False),
        sa.Column("candidate", sa.String(32), nullable=False),
        sa.Column("policy", JSONB, nullable=False),
        sa.Column("step", sa.Integer, nullable=False, server_default="0"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("snapshot", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("figures", JSONB, nullable=True),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("created_by", sa.String(128), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_alias_rollouts_state", "alias_rollouts", ["state"])


def downgrade() -> None:
    op.drop_index("ix_alias_rollouts_state", table_name="alias_rollouts")
    op.drop_table("alias_rollouts")
    op.drop_column("model_aliases", "shadow")
