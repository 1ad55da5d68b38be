"""Migrations 0004 and 0007: rows registered before the lifecycle (and before push options) keep serving,
unchanged."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from shared.clients import db
from shared.services import Services
from tests.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.integration


@pytest.fixture
def old_database(base_settings: Any) -> Iterator[Any]:
    name = f"kinfer_mig_{uuid.uuid4().hex[:8]}"
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    settings = type(base_settings).from_env(environ={}, database_url=url, redis_url=base_settings.redis_url)
    db.ensure_database(settings)
    db.upgrade(settings, "0003_batch")
    yield settings
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_rows_from_before_the_lifecycle_are_ready_versions_without_a_triton_version(old_database: Any) -> None:
    engine = sa.create_engine(old_database.database_url)
    model_id, name = uuid.uuid4(), f"old-{uuid.uuid4().hex[:6]}"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO models (id, name, version, framework, format, triton_model) "
                "VALUES (:i, :n, '1', 'onnx', 'onnx', 'iris_classifier')"
            ),
            {"i": model_id, "n": name},
        )
    engine.dispose()
    db.upgrade(old_database)
    services = Services(old_database)
    try:
        model = services.registry.resolve_model(name)
        assert (model["id"], model["state"], model["triton_version"], model["repository_uri"]) == (
            str(model_id),
            "ready",
            None,
            None,
        )
        assert model["triton_config"] is None  # 0007: the defaults it was registered with
        from alembic import command

        command.downgrade(db.alembic_config(old_database), "0003_batch")  # and back down, and up again
        db.upgrade(old_database)
    finally:
        services.close()
