"""Per-key callback signing secrets on real PostgreSQL and Redis: answered once by the create and by a
rotation (the keys function and ``kinfer keys callback-secret``), derived (never stored), distinct per key,
and off without CALLBACK_SIGNING_SECRET."""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shared.access.keys import derive_callback_secret
from shared.cli import main
from shared.clients.schema import api_keys
from shared.services import Services, reset_services
from shared.settings import Settings
from tests.conftest import function_client
from tests.integration.servers import InProcessServer

pytestmark = pytest.mark.integration
MASTER = "master-callback-secret-for-tests"


def _name() -> str:
    return f"cb-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def services(base_settings: Settings) -> Iterator[Services]:
    settings = dataclasses.replace(base_settings, auth_required=True, auth_cache_ttl_s=0)
    yield reset_services(dataclasses.replace(settings, callback_signing_secret=MASTER))
    reset_services(None)


@pytest.fixture
def admin(services: Services) -> dict[str, str]:
    _, secret = services.keys.create_key(_name(), "admin")
    return {"Authorization": f"Bearer {secret}"}


def _salt(services: Services, key_id: str) -> str:
    with services.db.begin() as conn:
        return str(conn.execute(sa.select(api_keys.c.callback_salt).where(api_keys.c.id == uuid.UUID(key_id))).scalar())


def test_each_key_gets_its_own_secret_derived_from_a_stored_salt_never_stored_itself(
    services: Services, admin: dict[str, str]
) -> None:
    client = function_client("keys", "manage_api_keys")
    first = client.post("/v1/keys", json={"name": _name(), "scopes": ["infer"]}, headers=admin).json()
    second = client.post("/v1/keys", json={"name": _name(), "scopes": ["infer"]}, headers=admin).json()
    assert first["callback_secret"] != second["callback_secret"]
    salt = _salt(services, first["id"])
    assert len(salt) == 64 and salt != _salt(services, second["id"])
    assert derive_callback_secret(MASTER, first["id"], salt) == first["callback_secret"]
    assert derive_callback_secret("another-master", first["id"], salt) != first["callback_secret"]
    shown = client.get(f"/v1/keys/{first['id']}", headers=admin)
    listing = client.get("/v1/keys?limit=1000", headers=admin)
    for answer in (shown, listing):  # shown once: never in a read, nor the salt it derives from
        assert first["callback_secret"] not in answer.text and salt not in answer.text
        assert "callback_salt" not in answer.text


def test_rotation_by_the_key_itself_answers_a_new_secret_once(services: Services, admin: dict[str, str]) -> None:
    client = function_client("keys", "manage_api_keys")
    created = client.post("/v1/keys", json={"name": _name(), "scopes": ["batch"]}, headers=admin).json()
    own = {"Authorization": f"Bearer {created['key']}"}
    mine = client.post(f"/v1/keys/{created['id']}/callback-secret", headers=own)
    assert mine.status_code == 200, mine.text
    assert mine.json()["callback_secret"] != created["callback_secret"]
    assert services.keys.callback_secret_of(created["id"]) == mine.json()["callback_secret"]
    by_admin = client.post(f"/v1/keys/{created['id']}/callback-secret", headers=admin)  # an operator: no secret
    assert by_admin.status_code == 403 and by_admin.json()["code"] == "forbidden", by_admin.text
    assert "callback_secret" not in by_admin.json() and "never learn" in by_admin.json()["error"]
    assert services.keys.callback_secret_of(created["id"]) == mine.json()["callback_secret"]  # not rotated
    assert client.post(f"/v1/keys/{uuid.uuid4()}/callback-secret", headers=admin).status_code == 403
    assert client.post("/v1/keys/self/callback-secret").status_code == 401


def test_without_a_master_secret_keys_have_no_callback_secret(base_settings: Settings) -> None:
    services = reset_services(dataclasses.replace(base_settings, auth_required=True, callback_signing_secret=""))
    try:
        _, secret = services.keys.create_key(_name(), "admin")
        client = function_client("keys", "manage_api_keys")
        headers = {"Authorization": f"Bearer {secret}"}
        created = client.post("/v1/keys", json={"name": _name(), "scopes": ["infer"]}, headers=headers).json()
        assert "callback_secret" not in created
        off = client.post("/v1/keys/self/callback-secret", headers=headers)
        assert off.status_code == 409 and off.json()["code"] == "callbacks_off"
        assert "CALLBACK_SIGNING_SECRET" in off.json()["error"]
    finally:
        reset_services(None)


@pytest.fixture
def cli(services: Services, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    _, admin = services.keys.create_key(_name(), "admin")
    server = InProcessServer("keys", "manage_api_keys")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("KINFER_URL", server.url.rstrip("/"))
    monkeypatch.setenv("KINFER_API_KEY", admin)
    yield {"admin": admin}
    server.stop()


def test_kinfer_keys_create_shows_it_and_callback_secret_rotates_it(
    services: Services, cli: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["keys", "create", "--name", _name(), "--scopes", "infer"]) == 0
    out = capsys.readouterr().out
    key_id = re.search(r"^id:\s+(\S+)$", out, re.M).group(1)
    key = re.search(r"^key:\s+(kf_\S+)$", out, re.M).group(1)
    first = re.search(r"^callback_secret:\s+(kcs_\S+)$", out, re.M).group(1)
    assert services.keys.callback_secret_of(key_id) == first
    monkeypatch.setenv("KINFER_API_KEY", key)  # the key itself: `self`
    assert main(["keys", "callback-secret", "self"]) == 0
    out, err = capsys.readouterr()
    rotated = re.search(r"^callback_secret:\s+(kcs_\S+)$", out, re.M).group(1)
    assert rotated != first and services.keys.callback_secret_of(key_id) == rotated
    assert "not shown again" in err


def test_migration_0006_gives_existing_keys_salts_of_their_own(base_settings: Settings) -> None:
    from alembic import command

    from shared.clients import db
    from tests.conftest import PG_ADMIN_URL

    name = f"kinfer_mig_{uuid.uuid4().hex[:8]}"
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    settings = Settings.from_env(environ={}, database_url=url, redis_url=base_settings.redis_url)
    db.ensure_database(settings)
    try:
        db.upgrade(settings, "0005_infer_requests")
        engine = sa.create_engine(settings.database_url)
        ids = [uuid.uuid4(), uuid.uuid4()]
        with engine.begin() as conn:
            for number, key_id in enumerate(ids):
                conn.execute(
                    sa.text(
                        "INSERT INTO api_keys (id, name, key_hash, prefix, scopes) "
                        "VALUES (:i, :n, :h, 'kf_x', '[\"infer\"]'::jsonb)"
                    ),
                    {"i": key_id, "n": f"old-{number}", "h": f"{number:064d}"},
                )
        db.upgrade(settings)
        with engine.begin() as conn:
            salts = [
                conn.execute(sa.text("SELECT callback_salt FROM api_keys WHERE id = :i"), {"i": i}).scalar_one()
                for i in ids
            ]
        assert all(len(s) == 64 for s in salts) and salts[0] != salts[1]
        command.downgrade(db.alembic_config(settings), "0005_infer_requests")  # and back down, and up again
        db.upgrade(settings)
        engine.dispose()
    finally:
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
