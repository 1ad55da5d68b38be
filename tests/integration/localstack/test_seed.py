"""`kinfer up` seeds the demo models into a database from before Kinfer managed model files."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shared.clients import db
from shared.clients.schema import triton_models
from shared.localstack import stack
from shared.localstack.s3 import S3Server
from shared.services import Services
from tests.conftest import PG_ADMIN_URL, free_port

pytestmark = pytest.mark.integration

OLD_ROW = (
    "INSERT INTO models (id, name, version, framework, format, triton_model) "
    "VALUES (:i, :n, '1', 'onnx', 'onnx', 'iris_classifier')"
)


@pytest.fixture
def old_stack(base_settings: Any, tmp_path: Path) -> Iterator[Any]:
    name = f"kinfer_seed_{uuid.uuid4().hex[:8]}"
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    s3 = S3Server(port=free_port())
    s3.start()
    settings = dataclasses.replace(
        type(base_settings).from_env(environ={}, database_url=url, redis_url=base_settings.redis_url),
        s3_endpoint_url=s3.url,
        model_repository_uri=f"s3://models-{name}/repo",
        check_backends=False,
    )
    db.ensure_database(settings)
    db.upgrade(settings, "0003_batch")
    engine = sa.create_engine(settings.database_url)
    with engine.begin() as conn:  # the demo and a user's model, both registered as unmanaged files
        for row_name in ("iris_classifier", f"e2e-{uuid.uuid4().hex[:6]}"):
            conn.execute(sa.text(OLD_ROW), {"i": uuid.uuid4(), "n": row_name})
    engine.dispose()
    db.upgrade(settings)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(stack, "state_dir", lambda: tmp_path)
    try:
        yield settings
    finally:
        monkey.undo()
        s3.stop()
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_the_demo_is_pushed_over_its_old_registration_and_others_pointing_at_it(old_stack: Any) -> None:
    services = Services(old_stack)
    try:
        pushed = stack._seed_model(services.registry, services.artifacts, services.db, stack.DEMO_MODELS[0])
        assert pushed is not None
        model = services.registry.get_model(pushed)
        assert (model["name"], model["triton_model"], model["triton_version"]) == (
            "iris_classifier",
            "iris_classifier",
            1,
        )
        assert model["repository_uri"], "the demo is now a version whose files Kinfer manages"
        with services.db.read() as conn:
            owner = conn.execute(
                sa.select(triton_models.c.owner).where(triton_models.c.name == "iris_classifier")
            ).scalar_one()
        assert owner == "iris_classifier"
    finally:
        services.close()


def test_a_demo_name_held_by_another_model_is_a_clear_error(old_stack: Any) -> None:
    services = Services(old_stack)
    try:
        with services.db.begin() as conn:
            conn.execute(sa.insert(triton_models).values(name="iris_classifier", owner="someone", last_version=3))
        with pytest.raises(stack.StackError, match="holds the versions of model 'someone'"):
            stack._seed_model(services.registry, services.artifacts, services.db, stack.DEMO_MODELS[0])
    finally:
        services.close()
