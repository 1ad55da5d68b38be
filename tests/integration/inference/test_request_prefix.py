"""``GET /v1/requests?prefix=``: a caller finds its own async requests by the start of their id (real
PostgreSQL, the infer function under functions-framework's test client); never another key's."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.batch import request_store as store
from shared.services import reset_services
from tests.conftest import function_client

pytestmark = pytest.mark.integration


def insert(services: Any, request_id: uuid.UUID, owner: str) -> None:
    values: store.NewRequest = {
        "id": request_id,
        "owner": owner,
        "protocol": "v1",
        "model_name": "iris",
        "model_version": "1",
        "route_key": None,
        "body": b"{}",
        "request_id": "r",
        "trace_id": "",
        "callback_url": None,
        "callback_status": None,
    }
    with services.db.begin() as conn:
        store.insert(conn, values, 600)


@pytest.fixture
def world(base_settings: Any) -> Iterator[tuple[Any, dict[str, str], dict[str, str], str]]:
    services = reset_services(dataclasses.replace(base_settings, auth_required=True))
    tag = uuid.uuid4().hex[:8]
    alice, alice_key = services.keys.create_key(f"alice-{tag}", ["infer"])
    _, bob_key = services.keys.create_key(f"bob-{tag}", ["infer", "admin"])
    # two of alice's requests share their first 6 digits; the prefix is random per run: no clash with others
    for last in ("1", "2"):
        insert(services, uuid.UUID(f"{tag}-{tag[:4]}-4000-8000-00000000000{last}"), str(alice["id"]))
    yield (
        function_client("infer", "run_inference"),
        {"Authorization": f"Bearer {alice_key}"},
        {"Authorization": f"Bearer {bob_key}"},
        tag,
    )
    reset_services(None)


def test_a_prefix_finds_the_callers_own_requests_only(world: Any) -> None:
    api, alice, bob, tag = world
    found = api.get("/v1/requests", params={"prefix": tag[:6].upper()}, headers=alice)
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["prefix"] == tag[:6] and body["more"] is False
    assert sorted(r["id"][-1] for r in body["requests"]) == ["1", "2"]
    assert {r["status"] for r in body["requests"]} == {"queued"} and body["requests"][0]["model"] == "iris"
    one = api.get("/v1/requests", params={"prefix": f"{tag}-{tag[:4]}-4000-8000-000000000002"}, headers=alice)
    assert [r["id"][-1] for r in one.json()["requests"]] == ["2"]
    theirs = api.get("/v1/requests", params={"prefix": tag}, headers=bob)  # an admin, but not the owner
    assert theirs.status_code == 200 and theirs.json()["requests"] == []
    assert api.get("/v1/requests", params={"prefix": tag}).status_code == 401


@pytest.mark.parametrize("prefix", ["", "abc", "ab-c", "zzzz", "ab%_", "a" * 37])
def test_a_bad_prefix_is_400_naming_the_field(world: Any, prefix: str) -> None:
    api, alice, _, _ = world
    resp = api.get("/v1/requests", params={"prefix": prefix}, headers=alice)
    assert resp.status_code == 400 and resp.json()["field"] == "prefix", resp.text
    assert "at least 4 hex digits" in resp.json()["error"]
