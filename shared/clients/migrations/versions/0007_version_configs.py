"""Per-version model configs: the push options a version's generated ``config.pbtxt`` was written with
(``models.triton_config``; NULL for every existing row, which keeps the defaults it was installed with).

Revision ID: 0007_version_configs
Revises: 0006_callback_secrets
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007_version_configs"
down_revision = "0006_callback_secrets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("models", sa.Column("triton_config", JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("models", "triton_config")
