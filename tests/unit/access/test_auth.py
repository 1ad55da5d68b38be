"""Unit tests of key parsing, hashing, scopes, the lookup cache and authorize() with fakes at the boundary."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import pytest

from shared.access import auth, keys
from shared.access.auth import KeyCache, Principal, authorize, key_from_headers
from shared.access.ratelimit import Decision
from shared.errors import Forbidden, InvalidInput, RateLimited, Unauthorized
from shared.settings import Settings


# -- header parsing -----------------------------------------------------------
@pytest.mark.parametrize("headers, expected", [
    ({"Authorization": "Bearer kf_abc.DEF-123"}, "kf_abc.DEF-123"),
    ({"Authorization": "bearer   demo-token  "}, "demo-token"),
    ({"X-API-Key": "demo-token"}, "demo-token"),
    ({"Authorization": "Bearer a-key-1", "X-API-Key": "b-key-2"}, "a-key-1"),
    ({"Authorization": "Basic dXNlcjpwYXNz", "X-API-Key": "b-key-2"}, "b-key-2"),
])
def test_key_from_headers(headers: dict[str, str], expected: str) -> None:
    assert key_from_headers(headers) == expected


def test_missing_key_challenges_with_bearer() -> None:
    with pytest.raises(Unauthorized) as err:
        key_from_headers({})
    assert err.value.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("headers", [
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer two words"},
    {"Authorization": "Bearer " + "k" * 10_000},
    {"X-API-Key": "x" * 513},
    {"X-API-Key": "ключ"},
])
def test_malformed_keys_are_unauthorized(headers: dict[str, str]) -> None:
    with pytest.raises(Unauthorized):
        key_from_headers(headers)


# -- hashing and key format -----------------------------------------------------
def test_hash_is_sha256_hex_and_keys_are_random() -> None:
    assert keys.hash_key("demo-token") == hashlib.sha256(b"demo-token").hexdigest()
    a, b = keys.new_secret(), keys.new_secret()
    assert a != b and a.startswith("kf_") and len(a) == 3 + 43
    assert keys.KEY_CHARS.fullmatch(a)


def test_display_prefix_never_reveals_much() -> None:
    secret = keys.new_secret()
    assert keys.display_prefix(secret) == secret[:10]
    assert keys.display_prefix("demo-token") == "demo"


@pytest.mark.parametrize("raw, expected", [
    ("infer,batch", ["infer", "batch"]),
    (" Admin , infer,admin", ["admin", "infer"]),
    (["batch"], ["batch"]),
])
def test_parse_scopes(raw: Any, expected: list[str]) -> None:
    assert keys.parse_scopes(raw) == expected


@pytest.mark.parametrize("raw", ["", ",", "infer,root", [], ["write"]])
def test_parse_scopes_rejects(raw: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        keys.parse_scopes(raw)
    assert err.value.field == "scopes"


# -- scopes ---------------------------------------------------------------------------
@pytest.mark.parametrize("scopes, wanted, allowed", [
    ({"infer"}, "infer", True),
    ({"infer"}, "batch", False),
    ({"infer"}, "admin", False),
    ({"batch"}, "any", True),
    ({"admin"}, "infer", True),
    ({"admin"}, "batch", True),
    ({"infer", "batch"}, "admin", False),
])
def test_scope_logic(scopes: set[str], wanted: str, allowed: bool) -> None:
    assert Principal("id", "n", frozenset(scopes)).allows(wanted) is allowed


# -- cache ------------------------------------------------------------------------------
def test_key_cache_expires_and_caches_misses(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    cache = KeyCache(ttl_s=5)
    principal = Principal("id", "n", frozenset({"infer"}))
    cache.put("h1", principal)
    cache.put("h2", None)
    assert cache.get("h1") == (True, principal) and cache.get("h2") == (True, None)
    now[0] += 5.1
    assert cache.get("h1") == (False, None)


def test_key_cache_ttl_zero_disables() -> None:
    cache = KeyCache(ttl_s=0)
    cache.put("h", Principal("id", "n", frozenset()))
    assert cache.get("h") == (False, None)


# -- authorize with fakes at the store and limiter boundary -----------------------------
class FakeLimiter:
    def __init__(self, decision: Decision) -> None:
        self.decision, self.calls = decision, []

    def check(self, identifier: str, per_minute: int) -> Decision:
        self.calls.append((identifier, per_minute))
        return self.decision


class FakeServices:
    def __init__(self, limiter: FakeLimiter) -> None:
        self.settings = Settings.from_env(environ={}, rate_limit_per_minute=50)
        self.rate_limiter = limiter
        self.key_cache = KeyCache(self.settings.auth_cache_ttl_s)


RECORDS = {keys.hash_key("good-key-1"): {"id": "k1", "name": "n", "scopes": ["infer"], "rate_limit_per_minute": None},
           keys.hash_key("slow-key-1"): {"id": "k2", "name": "n", "scopes": ["infer"], "rate_limit_per_minute": 3}}


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    looked_up: list[str] = []

    def fake_authenticate(services: Any, digest: str) -> dict | None:
        looked_up.append(digest)
        return RECORDS.get(digest)

    monkeypatch.setattr(keys, "authenticate", fake_authenticate)
    return looked_up


def _call(limiter: FakeLimiter, headers: dict[str, str]) -> Any:
    return SimpleNamespace(services=FakeServices(limiter), request=SimpleNamespace(headers=headers),
                           response_headers={})


def test_authorize_sets_headers_and_uses_the_default_limit(store: list[str]) -> None:
    limiter = FakeLimiter(Decision(True, 50, 49, 1234.2))
    call = _call(limiter, {"X-API-Key": "good-key-1"})
    principal = authorize(call, "infer")
    assert principal.key_id == "k1" and limiter.calls == [("k1", 50)]
    assert call.response_headers == {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "49",
                                     "X-RateLimit-Reset": "1235"}
    authorize(call, "any")
    assert len(store) == 1  # the second lookup came from the cache


def test_authorize_uses_the_key_limit_and_raises_429(store: list[str]) -> None:
    limiter = FakeLimiter(Decision(False, 3, 0, 10**10))
    with pytest.raises(RateLimited) as err:
        authorize(_call(limiter, {"Authorization": "Bearer slow-key-1"}), "infer")
    assert limiter.calls == [("k2", 3)]
    assert err.value.retry_after >= 1 and err.value.headers["X-RateLimit-Remaining"] == "0"


def test_authorize_unknown_and_forbidden(store: list[str]) -> None:
    limiter = FakeLimiter(Decision(True, 50, 49, 0))
    with pytest.raises(Unauthorized):
        authorize(_call(limiter, {"X-API-Key": "nope-key-1"}), "infer")
    with pytest.raises(Forbidden) as err:
        authorize(_call(limiter, {"X-API-Key": "good-key-1"}), "batch")
    assert "'batch'" in err.value.message
    assert limiter.calls == []  # refused requests do not spend the quota
