"""Token limits and usage: ``api_keys.tokens_per_minute`` (a key's limit in tokens per minute beside its
requests-per-minute ``rate_limit_per_minute``; NULL: no token limit) and ``token_usage`` (prompt and completion
tokens per key, model and hour, upserted in batches by ``shared.access.tokens``).

Revision ID: 0012_token_limits
Revises: 0011_shadow_rollouts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_token_limits"
down_revision = "0011_shadow_rollouts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("tokens_per_minute", sa.Integer, nullable=True))
    op.create_table(
        "token_usage",
        sa.Column("key_id", sa.String(36), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("requests", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_token_usage_hour", "token_usage", ["hour"])


def downgrade() -> None:
    op.drop_index("ix_token_usage_hour", table_name="token_usage")
    op.drop_table("token_usage")
    op.drop_column("api_keys", "tokens_per_minute")
