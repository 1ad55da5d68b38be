"""Request authorization: API key from the headers, scope check, per-key rate limit.

``authorize(call, scope)`` is called by ``shared.web.http.dispatch`` for routes with a
scope when AUTH_REQUIRED is on. Key lookups (digest -> principal, misses included)
are cached in-process for AUTH_CACHE_TTL_S (default 5 s), so a revocation takes
effect within that time on every instance; the hot path is a SHA-256, a dict
lookup and one Redis round trip for the rate limit.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.access import keys
from shared.errors import Forbidden, RateLimited, Unauthorized

if TYPE_CHECKING:
    from shared.services import Services

ANY = "any"
ADMIN = "admin"
MAX_HEADER_LEN = 512
MAX_CACHED = 10_000
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="kinfer"'}
INVALID = {"WWW-Authenticate": 'Bearer realm="kinfer", error="invalid_token"'}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, name, scopes and own rate limit (None = the default)."""

    key_id: str
    name: str
    scopes: frozenset[str]
    rate_limit_per_minute: int | None = None

    def allows(self, scope: str) -> bool:
        return scope == ANY or ADMIN in self.scopes or scope in self.scopes


def key_from_headers(headers: Any) -> str:
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
    raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                       headers=CHALLENGE)


def _well_formed(token: str) -> str:
    if not token or len(token) > MAX_HEADER_LEN or not keys.KEY_CHARS.fullmatch(token):
        raise Unauthorized("invalid or revoked API key", headers=INVALID)
    return token


class KeyCache:
    """digest -> (Principal or None, expiry); bounded, thread-safe enough (dict ops are atomic)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[Principal | None, float]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> tuple[bool, Principal | None]:
        found = self._entries.get(digest)
        if found is None or found[1] < time.monotonic():
            return False, None
        return True, found[0]

    def put(self, digest: str, principal: Principal | None) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= MAX_CACHED:
                self._entries.clear()
            self._entries[digest] = (principal, time.monotonic() + self.ttl_s)

    def clear(self) -> None:
        self._entries.clear()



def principal_for(services: Services, plaintext: str) -> Principal | None:
    """The principal of an active key, through the in-process cache; None when unknown or revoked."""
    digest = keys.hash_key(plaintext)
    cache = services.key_cache
    hit, principal = cache.get(digest)
    if hit:
        return principal
    record = keys.authenticate(services, digest)
    principal = None if record is None else Principal(
        key_id=record["id"], name=record["name"], scopes=frozenset(record["scopes"]),
        rate_limit_per_minute=record["rate_limit_per_minute"])
    cache.put(digest, principal)
    return principal


def authorize(call: Any, scope: str) -> Principal:
    """Authenticate the caller, check ``scope``, count the request against the key's rate limit."""
    services = call.services
    principal = principal_for(services, key_from_headers(call.request.headers))
    if principal is None:
        raise Unauthorized("invalid or revoked API key", headers=INVALID)
    if not principal.allows(scope):
        raise Forbidden(f"this API key lacks the '{scope}' scope this operation requires")
    limit = principal.rate_limit_per_minute or services.settings.rate_limit_per_minute
    decision = services.rate_limiter.check(principal.key_id, limit)
    headers = decision.headers()
    if not decision.allowed:
        raise RateLimited(f"rate limit of {limit} requests per minute exceeded for this API key",
                          retry_after=decision.retry_after, headers=headers)
    call.response_headers.update(headers)
    return principal
