"""Per-key callback signing secrets: ``api_keys.callback_salt``, the random input from which a key's callback
secret is derived under CALLBACK_SIGNING_SECRET (``shared.access.keys``; the secret itself is never stored,
so a read of the database alone cannot sign a callback), and when it last changed.

Existing keys get a salt of their own now (``gen_random_uuid``: PostgreSQL's strong random source).

Revision ID: 0006_callback_secrets
Revises: 0005_infer_requests
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_callback_secrets"
down_revision = "0005_infer_requests"
branch_labels = None
depends_on = None

_RANDOM_SALT = "replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '')"


def upgrade() -> None:
    op.add_column(
        "api_keys",
        sa.Column("callback_salt", sa.String(64), nullable=False, server_default=sa.text(_RANDOM_SALT)),
    )
    op.add_column(
        "api_keys",
        sa.Column(
            "callback_secret_rotated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_column("api_keys", "callback_secret_rotated_at")
    op.drop_column("api_keys", "callback_salt")
