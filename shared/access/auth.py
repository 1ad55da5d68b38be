"""Request authorization: API key from the headers, scope check, per-key rate limit.

``Authenticator.authorize(call, scope)`` (async) is called by ``shared.web.dispatch.dispatch`` for routes
with a scope when AUTH_REQUIRED is on. Key lookups (digest -> principal, misses
included) are cached in-process for AUTH_CACHE_TTL_S (default 5 s), so a revocation
takes effect within that time on every instance; a miss reads PostgreSQL in a thread,
once however many requests wait for the same key. The hot path is a SHA-256, a dict
lookup and the rate limiter's local quota (``shared.access.ratelimit``): no database
and usually no Redis round trip.

While PostgreSQL is unreachable, a key seen valid within AUTH_OUTAGE_TTL_S keeps
working (the database is not asked again for ``OUTAGE_RETRY_S``); an unknown key is
answered 503, since it cannot be checked. A key revoked during the outage (or shortly
before it, and not used since) works until PostgreSQL is back.

A key with ``expires_at`` carries it in its cached principal, and every request compares it with
the clock: an expired key answers 401 ``key_expired`` at once, whatever the cache holds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from shared.access import keys
from shared.clients.aio import SingleFlight
from shared.domain import ApiKeyRecord
from shared.errors import Forbidden, NotFound, RateLimited, Unauthorized, Unavailable

if TYPE_CHECKING:
    from shared.access.keys import KeyStore
    from shared.access.ratelimit import RateLimiter
    from shared.settings import Settings
    from shared.web.request import Call

ANY = "any"
ADMIN = "admin"
SELF = "self"
MAX_HEADER_LEN = 512
MAX_CACHED = 10_000
OUTAGE_RETRY_S = 2.0
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="kinfer"'}
INVALID = {"WWW-Authenticate": 'Bearer realm="kinfer", error="invalid_token"'}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, name, scopes, own rate limit (None = the default), token limit per minute
    (None = none; ``shared.access.tokens``) and expiry."""

    key_id: str
    name: str
    scopes: frozenset[str]
    rate_limit_per_minute: int | None = None
    expires_at: float | None = None  # epoch seconds; None = never
    tokens_per_minute: int | None = None

    def allows(self, scope: str) -> bool:
        return scope == ANY or ADMIN in self.scopes or scope in self.scopes


def key_from_headers(headers: Mapping[str, str]) -> str:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key``; Unauthorized when absent or malformed."""
    auth = headers.get("Authorization", "")
    api_key = headers.get("X-API-Key", "")
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer":
            return _well_formed(token.strip())
        if not api_key:
            raise Unauthorized("the Authorization header must use the Bearer scheme", headers=CHALLENGE)
    if api_key:
        return _well_formed(api_key.strip())
    raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'", headers=CHALLENGE)


def _well_formed(token: str) -> str:
    if not token or len(token) > MAX_HEADER_LEN or not keys.KEY_CHARS.fullmatch(token):
        raise Unauthorized("invalid or revoked API key", headers=INVALID)
    return token


class KeyCache:
    """digest -> (Principal or None, fresh until, seen at); bounded (oldest out first).

    ``get`` answers fresh entries only (AUTH_CACHE_TTL_S). ``known`` answers a key seen
    valid within ``max_age`` seconds even after it went stale: what keeps known keys
    working while PostgreSQL is unreachable. Unknown keys are kept apart, in a table of
    their own: a flood of made-up keys cannot push real keys out.
    """

    def __init__(self, ttl_s: float, max_entries: int = MAX_CACHED) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Principal | None, float, float]] = {}
        self._unknown: dict[str, tuple[Principal | None, float, float]] = {}
        self._lock = threading.Lock()
        self.db_down_until = 0.0  # monotonic: the key store failed; do not try it again before

    def get(self, digest: str) -> tuple[bool, Principal | None]:
        found = self._entries.get(digest) or self._unknown.get(digest)
        if found is None or found[1] < time.monotonic():
            return False, None
        return True, found[0]

    def put(self, digest: str, principal: Principal | None, ttl_s: float | None = None) -> None:
        ttl = self.ttl_s if ttl_s is None else ttl_s
        if self.ttl_s <= 0:
            return
        now = time.monotonic()
        table = self._entries if principal is not None else self._unknown
        with self._lock:
            self._entries.pop(digest, None)
            self._unknown.pop(digest, None)
            while len(table) >= self.max_entries:
                table.pop(next(iter(table)))
            table[digest] = (principal, now + ttl, now)

    def known(self, digest: str, max_age: float) -> Principal | None:
        """The principal of a key seen valid at most ``max_age`` seconds ago (stale or not)."""
        found = self._entries.get(digest)
        if found is None or found[0] is None or found[2] < time.monotonic() - max_age:
            return None
        return found[0]

    def clear(self) -> None:
        self._entries.clear()
        self._unknown.clear()


def _principal(record: ApiKeyRecord | None) -> Principal | None:
    return (
        None
        if record is None
        else Principal(
            key_id=record["id"],
            name=record["name"],
            scopes=frozenset(record["scopes"]),
            rate_limit_per_minute=record["rate_limit_per_minute"],
            expires_at=expiry.timestamp() if (expiry := record.get("expires_at")) is not None else None,
            tokens_per_minute=record.get("tokens_per_minute"),
        )
    )


# Lookups of keys this process has not seen valid, at once: made-up keys (each a database read) queue
# here instead of taking the database and the thread pool from the requests of real keys.
UNKNOWN_LOOKUPS = 2


class Authenticator:
    """The per-request check: a key's principal (through ``KeyCache``), its scope and its rate limit."""

    def __init__(self, keys: KeyStore, key_cache: KeyCache, rate_limiter: RateLimiter, settings: Settings) -> None:
        self.keys = keys
        self.key_cache = key_cache
        self.rate_limiter = rate_limiter
        self.settings = settings
        self._lookups = SingleFlight()
        self._unknown_lookups: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    def principal_for(self, plaintext: str) -> Principal | None:
        """The principal of an active key, through the in-process cache; None when unknown or revoked."""
        digest = keys.hash_key(plaintext)
        hit, principal = self.key_cache.get(digest)
        if hit:
            return principal
        principal = _principal(self.keys.authenticate(digest))
        self.key_cache.put(digest, principal)
        return principal

    def _unknown_gate(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        gate = self._unknown_lookups.get(loop)
        if gate is None:
            for stale in [other for other in self._unknown_lookups if other.is_closed()]:
                self._unknown_lookups.pop(stale, None)
            gate = self._unknown_lookups[loop] = asyncio.Semaphore(UNKNOWN_LOOKUPS)
        return gate

    async def principal_for_async(self, plaintext: str) -> Principal | None:
        """``principal_for`` for the event loop: the key store is read in a thread, once per key however
        many requests wait; while it is unreachable a key seen valid within AUTH_OUTAGE_TTL_S keeps working."""
        digest = keys.hash_key(plaintext)
        cache = self.key_cache
        hit, principal = cache.get(digest)
        if hit:
            return principal
        if cache.db_down_until > time.monotonic():
            return self._outage(digest, None)

        async def lookup() -> Principal | None:
            if cache.known(digest, self.settings.auth_outage_ttl_s) is not None:  # a key seen valid: at once
                record = await asyncio.to_thread(self.keys.authenticate, digest)
            else:
                async with self._unknown_gate():
                    record = await asyncio.to_thread(self.keys.authenticate, digest)
            found = _principal(record)
            cache.put(digest, found)
            return found

        try:
            return await self._lookups.run(digest, lookup)
        except Unavailable as exc:
            cache.db_down_until = time.monotonic() + OUTAGE_RETRY_S
            return self._outage(digest, exc)

    def _outage(self, digest: str, exc: Unavailable | None) -> Principal | None:
        """A known key during a key-store outage, else 503 (an unknown key cannot be checked now)."""
        known = self.key_cache.known(digest, self.settings.auth_outage_ttl_s)
        if known is not None:
            self.key_cache.put(digest, known, ttl_s=min(self.key_cache.ttl_s, OUTAGE_RETRY_S))
            return known
        raise Unavailable(
            "API keys cannot be checked right now (the key store is unreachable); retry shortly",
            retry_after=OUTAGE_RETRY_S,
        ) from exc

    async def authorize(self, call: Call, scope: str) -> Principal:
        """Authenticate the caller, check ``scope``, count the request against the key's rate limit."""
        principal = await self.principal_for_async(key_from_headers(call.header_map))
        if principal is None:
            raise Unauthorized("invalid or revoked API key", headers=INVALID)
        call.principal = principal  # what follows (expiry, scope, rate limit) is logged and counted against it
        if principal.expires_at is not None and principal.expires_at <= time.time():
            raise Unauthorized(
                f"this API key expired at {_iso(principal.expires_at)}; ask an admin for a new key",
                code="key_expired",
                headers=INVALID,
            )
        if not principal.allows(scope):
            raise Forbidden(f"this API key lacks the '{scope}' scope this operation requires")
        limit = principal.rate_limit_per_minute or self.settings.rate_limit_per_minute
        decision = await self.rate_limiter.acquire(principal.key_id, limit)
        headers = decision.headers()
        if not decision.allowed:
            raise RateLimited(
                f"rate limit of {limit} requests per minute exceeded for this API key",
                retry_after=decision.retry_after,
                headers=headers,
            )
        call.response_headers.update(headers)
        return principal


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


class WhoAmI(TypedDict):
    """``GET /v1/keys/self``: the caller's key (never its secret)."""

    id: str | None
    name: str
    scopes: list[str]
    rate_limit_per_minute: int | None
    tokens_per_minute: int | None
    expires_at: str | None


def describe(principal: Principal | None) -> WhoAmI:
    """``GET /v1/keys/self``: who the caller's key is (never its secret); with AUTH_REQUIRED off, no key is
    needed and every scope is granted."""
    if principal is None:
        return {
            "id": None,
            "name": "anonymous (authentication is off)",
            "scopes": list(keys.SCOPES),
            "rate_limit_per_minute": None,
            "tokens_per_minute": None,
            "expires_at": None,
        }
    return {
        "id": principal.key_id,
        "name": principal.name,
        "scopes": sorted(principal.scopes),
        "rate_limit_per_minute": principal.rate_limit_per_minute,
        "tokens_per_minute": principal.tokens_per_minute,
        "expires_at": None if principal.expires_at is None else _iso(principal.expires_at),
    }


def own_key(principal: Principal | None, key_id: str) -> str:
    """The key id a route about a key's own secrets may act on: only the caller's own key (``self`` or its
    id), admin or not: an admin (an operator) manages keys, never learns a key's secrets (403 otherwise).
    With AUTH_REQUIRED off (no principal) any id, but not ``self``."""
    if principal is None:
        if key_id == SELF:
            raise NotFound("`self` names the caller's key, and authentication is off: give the key's id")
        return key_id
    if key_id in (SELF, principal.key_id):
        return principal.key_id
    raise Forbidden(
        "only the key itself (`self`) may rotate and read its callback signing secret; an admin key may revoke "
        "another key (DELETE /v1/keys/{id}) but never learn its secret"
    )
