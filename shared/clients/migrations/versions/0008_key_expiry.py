"""API keys may expire: ``api_keys.expires_at`` (NULL: never). An expired key answers 401 ``key_expired``.

Revision ID: 0008_key_expiry
Revises: 0007_version_configs
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_key_expiry"
down_revision = "0007_version_configs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("api_keys", "expires_at")
