"""Unit tests of key parsing, hashing, scopes, the lookup cache and authorize() with fakes at the boundary."""

from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace
from typing import Any

import pytest

from shared.access import auth, keys
from shared.access.auth import Authenticator, KeyCache, Principal, key_from_headers
from shared.access.ratelimit import Decision
from shared.errors import Forbidden, InvalidInput, RateLimited, Unauthorized, Unavailable
from shared.settings import Settings


# -- header parsing -----------------------------------------------------------
@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"Authorization": "Bearer kf_abc.DEF-123"}, "kf_abc.DEF-123"),
        ({"Authorization": "bearer   demo-token  "}, "demo-token"),
        ({"X-API-Key": "demo-token"}, "demo-token"),
        ({"Authorization": "Bearer a-key-1", "X-API-Key": "b-key-2"}, "a-key-1"),
        ({"Authorization": "Basic dXNlcjpwYXNz", "X-API-Key": "b-key-2"}, "b-key-2"),
    ],
)
def test_key_from_headers(headers: dict[str, str], expected: str) -> None:
    assert key_from_headers(headers) == expected


def test_missing_key_challenges_with_bearer() -> None:
    with pytest.raises(Unauthorized) as err:
        key_from_headers({})
    assert err.value.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer two words"},
        {"Authorization": "Bearer " + "k" * 10_000},
        {"X-API-Key": "x" * 513},
        {"X-API-Key": "ключ"},
    ],
)
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


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("infer,batch", ["infer", "batch"]),
        (" Admin , infer,admin", ["admin", "infer"]),
        (["batch"], ["batch"]),
    ],
)
def test_parse_scopes(raw: Any, expected: list[str]) -> None:
    assert keys.parse_scopes(raw) == expected


@pytest.mark.parametrize("raw", ["", ",", "infer,root", [], ["write"]])
def test_parse_scopes_rejects(raw: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        keys.parse_scopes(raw)
    assert err.value.field == "scopes"


# -- scopes ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "scopes, wanted, allowed",
    [
        ({"infer"}, "infer", True),
        ({"infer"}, "batch", False),
        ({"infer"}, "admin", False),
        ({"batch"}, "any", True),
        ({"admin"}, "infer", True),
        ({"admin"}, "batch", True),
        ({"infer", "batch"}, "admin", False),
    ],
)
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


def test_key_cache_is_bounded_oldest_out_first() -> None:
    cache = KeyCache(ttl_s=5, max_entries=3)
    for i in range(4):
        cache.put(f"h{i}", Principal(f"id{i}", "n", frozenset()))
    assert cache.get("h0") == (False, None) and cache.get("h3")[0]


def test_known_keys_outlive_their_ttl_within_the_outage_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    cache = KeyCache(ttl_s=5)
    principal = Principal("id", "n", frozenset({"infer"}))
    cache.put("good", principal)
    cache.put("bad", None)
    now[0] += 600
    assert cache.get("good") == (False, None)
    assert cache.known("good", max_age=3600) == principal
    assert cache.known("good", max_age=60) is None and cache.known("bad", max_age=3600) is None


# -- authorize with fakes at the store and limiter boundary -----------------------------
class FakeLimiter:
    def __init__(self, decision: Decision) -> None:
        self.decision, self.calls = decision, []

    async def acquire(self, identifier: str, per_minute: int) -> Decision:
        self.calls.append((identifier, per_minute))
        return self.decision


def authenticator(limiter: FakeLimiter, store: Any, key_cache: KeyCache | None = None) -> Authenticator:
    """An Authenticator over fakes: ``store`` stands for the KeyStore, ``limiter`` for the RateLimiter."""
    settings = Settings.from_env(environ={}, rate_limit_per_minute=50)
    return Authenticator(store, key_cache or KeyCache(settings.auth_cache_ttl_s), limiter, settings)


RECORDS = {
    keys.hash_key("good-key-1"): {"id": "k1", "name": "n", "scopes": ["infer"], "rate_limit_per_minute": None},
    keys.hash_key("slow-key-1"): {"id": "k2", "name": "n", "scopes": ["infer"], "rate_limit_per_minute": 3},
}


class Store:
    """The key store: answers from RECORDS, or raises Unavailable while ``down``."""

    def __init__(self) -> None:
        self.looked_up: list[str] = []
        self.down = False

    def authenticate(self, digest: str) -> dict | None:
        self.looked_up.append(digest)
        if self.down:
            raise Unavailable("the database is unavailable; retry shortly")
        return RECORDS.get(digest)


@pytest.fixture
def store() -> Store:
    return Store()


def _call(headers: dict[str, str]) -> Any:
    return SimpleNamespace(header_map=headers, response_headers={})


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_authorize_sets_headers_and_uses_the_default_limit(store: Store) -> None:
    limiter = FakeLimiter(Decision(True, 50, 49, 1234.2))
    authn = authenticator(limiter, store)
    call = _call({"X-API-Key": "good-key-1"})
    principal = run(authn.authorize(call, "infer"))
    assert principal.key_id == "k1" and limiter.calls == [("k1", 50)]
    assert call.response_headers == {
        "X-RateLimit-Limit": "50",
        "X-RateLimit-Remaining": "49",
        "X-RateLimit-Reset": "1235",
    }
    run(authn.authorize(call, "any"))
    assert len(store.looked_up) == 1  # the second lookup came from the cache


def test_concurrent_misses_read_the_store_once(store: Store) -> None:
    authn = authenticator(FakeLimiter(Decision(True, 50, 49, 0)), store)

    async def many() -> list[Principal | None]:
        return await asyncio.gather(*(authn.principal_for_async("good-key-1") for _ in range(10)))

    assert {p.key_id for p in run(many()) if p} == {"k1"} and len(store.looked_up) == 1


def test_authorize_uses_the_key_limit_and_raises_429(store: Store) -> None:
    limiter = FakeLimiter(Decision(False, 3, 0, 10**10))
    with pytest.raises(RateLimited) as err:
        run(authenticator(limiter, store).authorize(_call({"Authorization": "Bearer slow-key-1"}), "infer"))
    assert limiter.calls == [("k2", 3)]
    assert err.value.retry_after >= 1 and err.value.headers["X-RateLimit-Remaining"] == "0"


def test_authorize_unknown_and_forbidden(store: Store) -> None:
    limiter = FakeLimiter(Decision(True, 50, 49, 0))
    with pytest.raises(Unauthorized):
        run(authenticator(limiter, store).authorize(_call({"X-API-Key": "nope-key-1"}), "infer"))
    with pytest.raises(Forbidden) as err:
        run(authenticator(limiter, store).authorize(_call({"X-API-Key": "good-key-1"}), "batch"))
    assert "'batch'" in err.value.message
    assert limiter.calls == []  # refused requests do not spend the quota


def test_key_store_outage_serves_known_keys_and_refuses_unknown_ones_with_503(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    limiter = FakeLimiter(Decision(True, 50, 49, 0))
    authn = authenticator(limiter, store)
    assert run(authn.authorize(_call({"X-API-Key": "good-key-1"}), "infer")).key_id == "k1"
    store.down = True
    now[0] += 60  # the entry is stale: the store is asked, fails, the known key still works
    assert run(authn.authorize(_call({"X-API-Key": "good-key-1"}), "infer")).key_id == "k1"
    with pytest.raises(Unavailable) as err:
        run(authn.authorize(_call({"X-API-Key": "slow-key-1"}), "infer"))
    assert err.value.retry_after and "key store" in err.value.message
    asked = len(store.looked_up)
    run(authn.authorize(_call({"X-API-Key": "good-key-1"}), "infer"))
    assert len(store.looked_up) == asked  # the store is not hammered during the outage
    store.down = False
    now[0] += auth.OUTAGE_RETRY_S + 6
    RECORDS_BACKUP = dict(RECORDS)
    try:
        RECORDS.pop(keys.hash_key("good-key-1"))  # revoked meanwhile: honoured once the store is back
        with pytest.raises(Unauthorized):
            run(authn.authorize(_call({"X-API-Key": "good-key-1"}), "infer"))
    finally:
        RECORDS.update(RECORDS_BACKUP)


def test_made_up_keys_never_push_real_keys_out_of_the_cache() -> None:
    cache = KeyCache(ttl_s=60, max_entries=100)
    real = Principal("k1", "n", frozenset({"infer"}))
    cache.put("real", real)
    for i in range(10_000):
        cache.put(f"fake-{i}", None)
    assert cache.get("real") == (True, real) and cache.known("real", 3600) == real
    assert cache.get("fake-9999") == (True, None) and cache.get("fake-0") == (False, None), "misses are bounded"


def test_lookups_of_unknown_keys_are_bounded_and_a_known_key_skips_the_queue() -> None:
    import threading
    import time as clock

    running, most, lock = [0], [0], threading.Lock()

    def authenticate(digest: str) -> dict | None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        clock.sleep(0.05)
        with lock:
            running[0] -= 1
        return RECORDS.get(digest)

    store = SimpleNamespace(authenticate=authenticate)
    authn = authenticator(FakeLimiter(Decision(True, 50, 49, 0)), store, KeyCache(ttl_s=0.01))

    async def flood() -> list[Any]:
        await authn.principal_for_async("good-key-1")  # seen valid once
        await asyncio.sleep(0.02)  # its cache entry goes stale: the next use reads the store again
        fakes = [authn.principal_for_async(f"fake-{i}") for i in range(12)]
        started = clock.monotonic()
        real = asyncio.ensure_future(authn.principal_for_async("good-key-1"))
        answers = await asyncio.gather(*fakes)
        return [answers, await real, started]

    answers, real, _ = run(flood())
    assert answers == [None] * 12 and real is not None and real.key_id == "k1"
    assert most[0] <= auth.UNKNOWN_LOOKUPS + 1, "made-up keys read the store at most UNKNOWN_LOOKUPS at a time"
