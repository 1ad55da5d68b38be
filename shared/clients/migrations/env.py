"""Alembic environment: the URL comes from Settings, handed in by shared.clients.db.upgrade."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from shared.clients.schema import metadata
from shared.settings import Settings

config = context.config
url = config.attributes.get("database_url") or Settings.from_env().database_url

if context.is_offline_mode():
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection, connection.begin():
        # Serialise concurrent upgrades (several instances starting at once).
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(720417)"))
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
