"""API keys, scopes and rate limits through the models function, on real PostgreSQL and Redis."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from limits import RateLimitItemPerMinute

from shared.services import Services, reset_services
from shared.settings import Settings
from tests.conftest import free_port, function_client

pytestmark = pytest.mark.integration

CACHE_TTL_S = 0.2


@pytest.fixture(scope="module")
def client() -> Any:
    return function_client("models", "manage_models")


@pytest.fixture
def auth_services(base_settings: Settings) -> Iterator[Services]:
    settings = dataclasses.replace(base_settings, auth_required=True, auth_cache_ttl_s=CACHE_TTL_S)
    yield reset_services(settings)
    reset_services(None)


def _key(services: Services, scopes: str, rate_limit: int | None = None) -> tuple[dict, str]:
    return services.keys.create_key(f"test-{uuid.uuid4().hex[:8]}", scopes, rate_limit=rate_limit)


def _model() -> dict[str, str]:
    return {"name": f"auth-{uuid.uuid4().hex[:10]}", "version": "1", "framework": "onnx", "format": "onnx"}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_missing_key_is_401_with_challenge_and_json_error(client: Any, auth_services: Services) -> None:
    resp = client.get("/v1/models")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    body = resp.json()
    assert body["code"] == "unauthorized" and "API key" in body["error"] and body["request_id"]


def test_health_needs_no_key(client: Any, auth_services: Services) -> None:
    assert client.get("/health").status_code in (200, 503)


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer kf_not-a-real-key"},
        {"X-API-Key": "kf_not-a-real-key"},
        {"Authorization": "Bearer " + "a" * 10_000},
        {"Authorization": "Bearer bad key with spaces"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
    ],
)
def test_bad_keys_are_401(client: Any, auth_services: Services, headers: dict[str, str]) -> None:
    resp = client.get("/v1/models", headers=headers)
    assert resp.status_code == 401
    assert resp.json()["code"] == "unauthorized"
    assert "WWW-Authenticate" in resp.headers


def test_revoked_key_is_401_with_the_same_message_as_unknown(client: Any, auth_services: Services) -> None:
    record, key = _key(auth_services, "infer")
    assert client.get("/v1/models", headers=_bearer(key)).status_code == 200
    auth_services.keys.revoke_key(record["id"])
    time.sleep(CACHE_TTL_S + 0.05)  # the in-process lookup cache expires
    revoked = client.get("/v1/models", headers=_bearer(key))
    unknown = client.get("/v1/models", headers=_bearer("kf_unknown-key-123"))
    assert revoked.status_code == unknown.status_code == 401
    assert revoked.json()["error"] == unknown.json()["error"]


def test_scopes(client: Any, auth_services: Services) -> None:
    _, infer_key = _key(auth_services, "infer")
    _, admin_key = _key(auth_services, "admin")
    denied = client.post("/v1/models", json=_model(), headers=_bearer(infer_key))
    assert denied.status_code == 403
    assert denied.json()["code"] == "forbidden" and "'admin'" in denied.json()["error"]
    created = client.post("/v1/models", json=_model(), headers=_bearer(admin_key))
    assert created.status_code == 201, created.json()
    model_id = created.json()["id"]
    assert client.get(f"/v1/models/{model_id}", headers=_bearer(infer_key)).status_code == 200  # "any"
    assert client.delete(f"/v1/models/{model_id}", headers=_bearer(infer_key)).status_code == 403
    assert client.delete(f"/v1/models/{model_id}", headers=_bearer(admin_key)).status_code == 204


def test_bearer_and_x_api_key_both_work(client: Any, auth_services: Services) -> None:
    _, key = _key(auth_services, "batch")
    assert client.get("/v1/models", headers={"Authorization": f"bearer {key}"}).status_code == 200
    assert client.get("/v1/models", headers={"X-API-Key": key}).status_code == 200


def test_fixed_dev_key_is_idempotent(auth_services: Services) -> None:
    secret = f"dev-{uuid.uuid4().hex}"
    first = auth_services.keys.ensure_key("dev", secret, "admin")
    again = auth_services.keys.ensure_key("dev", secret, "admin")
    assert first["id"] == again["id"] and first["scopes"] == ["admin"]
    assert auth_services.auth.principal_for(secret).key_id == first["id"]


def test_rate_limit_per_key(client: Any, auth_services: Services) -> None:
    record, key = _key(auth_services, "infer", rate_limit=3)
    _, other = _key(auth_services, "infer", rate_limit=3)
    ok = [client.get("/v1/models", headers=_bearer(key)) for _ in range(3)]
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert [r.headers["X-RateLimit-Remaining"] for r in ok] == ["2", "1", "0"]
    assert ok[0].headers["X-RateLimit-Limit"] == "3"
    limited = client.get("/v1/models", headers=_bearer(key))
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["X-RateLimit-Limit"] == "3" and limited.headers["X-RateLimit-Remaining"] == "0"
    assert int(limited.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert client.get("/v1/models", headers=_bearer(other)).status_code == 200
    # Our one-round-trip check keeps limits' own bookkeeping: its limiter sees the same window.
    stats = auth_services.rate_limiter.limiter.get_window_stats(RateLimitItemPerMinute(3), record["id"])
    assert stats.remaining == 0


def test_default_limit_applies_without_a_per_key_limit(client: Any, base_settings: Settings) -> None:
    settings = dataclasses.replace(base_settings, auth_required=True, rate_limit_per_minute=2)
    services = reset_services(settings)
    try:
        _, key = _key(services, "infer")
        codes = [client.get("/v1/models", headers={"X-API-Key": key}).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
    finally:
        reset_services(None)


def test_redis_down_limits_in_process_and_fast(client: Any, base_settings: Settings) -> None:
    """Redis unreachable: each process enforces the limit itself (no fail-open), without waiting for Redis."""
    settings = dataclasses.replace(
        base_settings, auth_required=True, rate_limit_per_minute=2, redis_url=_dead_redis_url()
    )
    services = reset_services(settings)
    try:
        _, key = _key(services, "infer")
        started = time.monotonic()
        responses = [client.get("/v1/models", headers=_bearer(key)) for _ in range(5)]
        elapsed = time.monotonic() - started
        assert [r.status_code for r in responses] == [200, 200, 429, 429, 429]
        assert [r.headers["X-RateLimit-Remaining"] for r in responses[:2]] == ["1", "0"]
        assert responses[0].headers["X-RateLimit-Limit"] == "2"
        limited = responses[2]
        assert limited.json()["code"] == "rate_limited" and 1 <= int(limited.headers["Retry-After"]) <= 60
        assert client.get("/v1/models").status_code == 401  # still authenticated
        assert elapsed < 1.0
    finally:
        reset_services(None)


def _dead_redis_url() -> str:
    """A Redis URL on a free port where nothing listens."""
    return f"redis://127.0.0.1:{free_port()}/0"
