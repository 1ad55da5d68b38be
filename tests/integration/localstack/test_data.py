"""`kinfer up` starts private PostgreSQL and Redis from the Debian binaries when none answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from shared.localstack import data, procs
from shared.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_private_postgres_and_redis(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    pg_port, redis_port = free_port(), free_port()
    settings = Settings.from_env(
        environ={},
        database_url=f"postgresql+pg8000://postgres@127.0.0.1:{pg_port}/kinfer",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
    )
    pg_pid = data.ensure_postgres(settings, state)
    try:
        redis_pid = data.ensure_redis(settings, state)
        try:
            assert pg_pid and redis_pid and procs.alive(pg_pid) and procs.alive(redis_pid)
            assert data.ensure_postgres(settings, state) is None, "an answering server is used, not restarted"
            engine = sa.create_engine(settings.database_url.replace("/kinfer", "/postgres"))
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT 1")).scalar() == 1
            engine.dispose()
            assert redis.Redis.from_url(settings.redis_url).ping()
        finally:
            procs.stop(redis_pid)
    finally:
        data.stop_postgres(state)
        shutil.rmtree(data.pg_data_dir(state), ignore_errors=True)
    assert not procs.alive(pg_pid)
