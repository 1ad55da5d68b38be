"""Key expiry on real PostgreSQL and Redis: ``expires_in``/``expires_at`` at creation, 401 ``key_expired``
once the time has passed (also for a key the auth cache holds), ``expired`` in the key list."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.access import keys
from shared.clients.schema import api_keys
from shared.services import Services, reset_services
from shared.settings import Settings
from tests.conftest import function_client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client() -> Any:
    return function_client("keys", "manage_api_keys")


@pytest.fixture
def admin(base_settings: Settings) -> Iterator[tuple[dict[str, str], Services]]:
    # a long auth cache: expiry must hold whatever the cache remembers
    settings = dataclasses.replace(base_settings, auth_required=True, auth_cache_ttl_s=300)
    services: Services = reset_services(settings)
    _, secret = services.keys.create_key(f"admin-{uuid.uuid4().hex[:8]}", "admin")
    yield {"Authorization": f"Bearer {secret}"}, services
    reset_services(None)


def _expire(services: Services, key_id: str) -> None:
    with services.db.begin() as conn:
        conn.execute(
            api_keys.update()
            .where(api_keys.c.id == uuid.UUID(key_id))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def test_a_key_created_to_expire_says_when_and_answers_key_expired_after(
    client: Any, admin: tuple[dict[str, str], Services]
) -> None:
    headers, services = admin
    resp = client.post(
        "/v1/keys",
        json={"name": f"exp-{uuid.uuid4().hex[:8]}", "scopes": "admin", "expires_in": "30d"},
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    created = resp.json()
    expires = datetime.fromisoformat(created["expires_at"])
    assert timedelta(days=29, hours=23) < expires - datetime.now(UTC) <= timedelta(days=30)
    assert created["status"] == "active"
    theirs = {"Authorization": f"Bearer {created['key']}"}
    me = client.get("/v1/keys/self", headers=theirs)
    assert me.status_code == 200 and me.json()["expires_at"] is not None  # now in the auth cache

    _expire(services, created["id"])  # as if 30 days had passed (the next test covers the cache)
    services.auth.key_cache.clear()
    denied = client.get("/v1/keys/self", headers=theirs)
    assert denied.status_code == 401, denied.text
    assert denied.json()["code"] == "key_expired" and "expired at" in denied.json()["error"]
    assert created["key"] not in denied.text

    expired = client.get("/v1/keys?status=expired&limit=1000", headers=headers).json()
    assert created["id"] in {k["id"] for k in expired["keys"]}
    assert all(k["status"] == "expired" for k in expired["keys"])
    active = client.get("/v1/keys?status=active&limit=1000", headers=headers).json()
    assert created["id"] not in {k["id"] for k in active["keys"]}
    assert client.get(f"/v1/keys/{created['id']}", headers=headers).json()["status"] == "expired"


def test_expires_at_is_kept_and_bad_expiries_are_400_naming_the_field(
    client: Any, admin: tuple[dict[str, str], Services]
) -> None:
    headers, _ = admin
    when = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    ok = client.post(
        "/v1/keys",
        json={"name": f"exp-{uuid.uuid4().hex[:8]}", "scopes": "infer", "expires_at": when.isoformat()},
        headers=headers,
    )
    assert ok.status_code == 201, ok.text
    assert datetime.fromisoformat(ok.json()["expires_at"]) == when
    for body, field in (
        ({"expires_in": "soon"}, "expires_in"),
        ({"expires_in": "0d"}, "expires_in"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"expires_in": "99999d"}, "expires_in"),
        ({"expires_in": "1d", "expires_at": when.isoformat()}, "expires_in"),
    ):
        resp = client.post("/v1/keys", json={"name": "x-bad", "scopes": "infer", **body}, headers=headers)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["field"] == field and resp.json()["code"] == "invalid_input"


def test_an_expired_key_is_refused_even_from_the_auth_cache(
    client: Any, admin: tuple[dict[str, str], Services]
) -> None:
    """The principal the cache holds carries the expiry: the cache entry (300 s) outlives the key."""
    headers, services = admin
    _, secret = services.keys.create_key(
        f"exp-{uuid.uuid4().hex[:8]}", "admin", expires_at=datetime.now(UTC) + timedelta(days=1)
    )
    theirs = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/keys/self", headers=theirs).status_code == 200
    digest = keys.hash_key(secret)
    hit, principal = services.auth.key_cache.get(digest)
    assert hit and principal is not None
    services.auth.key_cache.put(digest, dataclasses.replace(principal, expires_at=datetime.now(UTC).timestamp() - 1))
    denied = client.get("/v1/keys/self", headers=theirs)
    assert denied.status_code == 401 and denied.json()["code"] == "key_expired"


@pytest.fixture
def cli_api(base_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[Services]:
    """The keys function on a free port; the CLI pointed at it with an admin key."""
    from tests.integration.servers import InProcessServer

    services: Services = reset_services(dataclasses.replace(base_settings, auth_required=True, auth_cache_ttl_s=0))
    _, admin = services.keys.create_key(f"cli-admin-{uuid.uuid4().hex[:6]}", "admin")
    server = InProcessServer("keys", "manage_api_keys")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("KINFER_URL", server.url.rstrip("/"))
    monkeypatch.setenv("KINFER_API_KEY", admin)
    yield services
    server.stop()
    reset_services(None)


def test_kinfer_keys_create_sets_the_expiry_and_list_shows_expired(
    cli_api: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from shared.cli import main

    assert (
        main(
            [
                "keys",
                "create",
                "--name",
                f"cli-exp-{uuid.uuid4().hex[:6]}",
                "--scopes",
                "infer",
                "--expires-in",
                "30d",
                "-o",
                "json",
            ]
        )
        == 0
    )
    created = json.loads(capsys.readouterr().out)
    assert timedelta(days=29) < datetime.fromisoformat(created["expires_at"]) - datetime.now(UTC) <= timedelta(days=30)
    # a bad value is a usage error: exit 2
    assert main(["keys", "create", "--name", "cli-exp-bad", "--scopes", "infer", "--expires-at", "yesterday"]) == 2
    assert "expires_at" in capsys.readouterr().err
    _expire(cli_api, created["id"])
    assert main(["keys", "list", "--status", "expired", "--limit", "1000"]) == 0
    listing = capsys.readouterr().out
    assert listing.splitlines()[0].split()[-1] == "EXPIRES"
    assert any(created["id"] in line and "expired" in line for line in listing.splitlines())
