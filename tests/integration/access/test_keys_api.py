"""The API key admin API (/v1/keys, the keys function) on real PostgreSQL and Redis: admin scope,
the secret answered once, lists without secrets, revocation that takes effect."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.services import Services, reset_services
from shared.settings import Settings
from tests.conftest import function_client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client() -> Any:
    return function_client("keys", "manage_api_keys")


@pytest.fixture
def admin(base_settings: Settings) -> Iterator[dict[str, str]]:
    settings = dataclasses.replace(base_settings, auth_required=True, auth_cache_ttl_s=0)
    services: Services = reset_services(settings)
    _, secret = services.keys.create_key(f"admin-{uuid.uuid4().hex[:8]}", "admin")
    yield {"Authorization": f"Bearer {secret}"}
    reset_services(None)


def _name() -> str:
    return f"app-{uuid.uuid4().hex[:8]}"


def test_create_answers_the_secret_once_with_location(client: Any, admin: dict[str, str]) -> None:
    resp = client.post(
        "/v1/keys", json={"name": _name(), "scopes": ["infer", "batch"], "rate_limit_per_minute": 60}, headers=admin
    )
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert created["key"].startswith("kf_") and created["prefix"] == created["key"][:10]
    assert created["scopes"] == ["infer", "batch"] and created["rate_limit_per_minute"] == 60
    assert created["status"] == "active" and created["revoked_at"] is None
    assert resp.headers["Location"] == f"/v1/keys/{created['id']}"
    shown = client.get(resp.headers["Location"], headers=admin).json()
    assert "key" not in shown and shown["id"] == created["id"] and shown["name"] == created["name"]
    listing = client.get("/v1/keys?status=active&limit=1000", headers=admin)
    assert listing.status_code == 200 and created["key"] not in listing.text
    body = listing.json()
    assert body["total_count"] == body["total"] >= 2 and created["id"] in {k["id"] for k in body["keys"]}
    assert all("key" not in k and "key_hash" not in k for k in body["keys"])


def test_a_revoked_key_stops_working_and_lists_as_revoked(client: Any, admin: dict[str, str]) -> None:
    created = client.post("/v1/keys", json={"name": _name(), "scopes": "admin"}, headers=admin).json()
    theirs = {"Authorization": f"Bearer {created['key']}"}
    assert client.get("/v1/keys?limit=1", headers=theirs).status_code == 200
    revoked = client.delete(f"/v1/keys/{created['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked" and revoked.json()["revoked_at"]
    time.sleep(0.05)
    assert client.get("/v1/keys", headers=theirs).status_code == 401
    ids = {k["id"] for k in client.get("/v1/keys?status=revoked&limit=1000", headers=admin).json()["keys"]}
    assert created["id"] in ids
    again = client.delete(f"/v1/keys/{created['id']}", headers=admin)  # idempotent, keeps the first time
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]


def test_only_admin_keys_manage_keys(client: Any, admin: dict[str, str]) -> None:
    from shared.services import get_services

    _, infer_key = get_services().keys.create_key(_name(), "infer,batch")
    resp = client.get("/v1/keys", headers={"Authorization": f"Bearer {infer_key}"})
    assert resp.status_code == 403 and "'admin' scope" in resp.json()["error"]
    assert client.post("/v1/keys", json={"name": _name(), "scopes": ["admin"]}).status_code == 401


@pytest.mark.parametrize(
    "body, field, message",
    [
        ({"scopes": ["infer"]}, "name", "name is required"),
        ({"name": "x"}, "scopes", "scopes is required"),
        ({"name": "x", "scopes": ["root"]}, "scopes", "unknown: root"),
        ({"name": "x", "scopes": [1]}, "scopes", "scopes must be a list"),
        ({"name": "x y!", "scopes": ["infer"]}, "name", "name must be"),
        ({"name": "x", "scopes": ["infer"], "rate_limit_per_minute": "10"}, "rate_limit_per_minute", "integer"),
        ({"name": "x", "scopes": ["infer"], "rate_limit_per_minute": 0}, "rate_limit_per_minute", "from 1"),
        ({"name": "x", "scopes": ["infer"], "key": "kf_mine"}, "key", "unknown field 'key'"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    client: Any, admin: dict[str, str], body: dict, field: str, message: str
) -> None:
    resp = client.post("/v1/keys", json=body, headers=admin)
    assert resp.status_code == 400 and resp.json()["field"] == field and message in resp.json()["error"]


def test_unknown_ids_query_and_methods(client: Any, admin: dict[str, str]) -> None:
    assert client.get(f"/v1/keys/{uuid.uuid4()}", headers=admin).status_code == 404
    assert client.delete("/v1/keys/not-a-uuid", headers=admin).status_code == 404
    resp = client.get("/v1/keys?include=secrets", headers=admin)
    assert resp.status_code == 400 and resp.json()["field"] == "include"
    assert client.get("/v1/keys?status=lost", headers=admin).json()["field"] == "status"
    assert client.put("/v1/keys/x", headers=admin).status_code == 405


def test_self_tells_any_key_its_name_and_scopes_never_its_secret(client: Any, admin: dict[str, str]) -> None:
    created = client.post(
        "/v1/keys", json={"name": _name(), "scopes": ["batch"], "rate_limit_per_minute": 90}, headers=admin
    ).json()
    resp = client.get("/v1/keys/self", headers={"Authorization": f"Bearer {created['key']}"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "id": created["id"],
        "name": created["name"],
        "scopes": ["batch"],
        "rate_limit_per_minute": 90,
        "tokens_per_minute": None,
        "expires_at": None,
    }
    assert created["key"] not in resp.text and created["prefix"] not in resp.text
    assert client.get("/v1/keys/self", headers=admin).json()["scopes"] == ["admin"]
    missing = client.get("/v1/keys/self")
    assert missing.status_code == 401 and missing.json()["code"] == "unauthorized"
    wrong = client.get("/v1/keys/self", headers={"Authorization": "Bearer kf_not-a-real-key"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid or revoked API key"
    assert client.get("/v1/keys/self?x=1", headers=admin).status_code == 400
