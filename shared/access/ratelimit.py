"""Per-key rate limits: quota leased from Redis in slices, in-process limits while Redis is down.

The shared state is ``limits``' sliding window counter (two counters per key, O(1)
memory whatever the limit), with ``limits``' own key layout, so ``limits``' limiter
reads the same windows (``RateLimiter.limiter.get_window_stats``).

A process does not ask Redis for every request. It leases a slice of the key's quota
(one Lua call: take up to ``n`` of what the window has left, answer the window) and
spends it locally; a slice is good for ``LEASE_S`` and what is left of it then is
dropped, never given back. Slices start at one request and double while a key keeps
spending its whole slice within the lease, up to ``max_slice(limit)`` =
``max(1, min(limit // 100, MAX_SLICE))``; a key used now and then keeps leasing one
request at a time, so leasing never costs it quota. The price is bounded
over-admission: requests admitted from a slice leased in one window may land in the
next, so a key can exceed its limit by at most one slice per serving process in a
window (1% of the limit, or 1 request for limits under 100 per minute). A leased
slice that runs out before the window has room again is refused locally until the
window's reset (no Redis round trip per refused request).

Redis down (or answering errors): each process enforces the limit by itself with an
in-process sliding window counter, so N processes admit at most N times the limit
until Redis is back; the outage is logged once and Redis is tried again after
``DOWN_FOR_S``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from shared.clients.aio import SingleFlight

log = logging.getLogger(__name__)

KEY_PREFIX = "kinfer:rl"
DOWN_FOR_S = 1.0
LEASE_S = 1.0
MAX_SLICE = 1000
LEASE_TRIES = 8
MAX_KEYS = 100_000  # keys with a lease or a local window kept per process
WINDOW_S = 60
REDIS_ERRORS = (redis.RedisError, OSError)

# limits' acquire_sliding_window, taking up to ARGV[3] instead of exactly that many, and answering
# {granted, previous count, previous ttl ms, current count, current ttl ms} in the same round trip.
_LEASE = """
local limit = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2]) * 1000
local wanted = tonumber(ARGV[3])
local current_ttl = tonumber(redis.call('pttl', KEYS[2]))
if current_ttl > 0 and current_ttl < expiry then
    redis.call('rename', KEYS[2], KEYS[1])
    redis.call('set', KEYS[2], 0, 'PX', current_ttl + expiry)
end
local previous_count = tonumber(redis.call('get', KEYS[1])) or 0
local previous_ttl = tonumber(redis.call('pttl', KEYS[1])) or 0
local current_count = tonumber(redis.call('get', KEYS[2])) or 0
current_ttl = tonumber(redis.call('pttl', KEYS[2])) or 0
if previous_ttl < 0 then previous_ttl = 0 end
if current_ttl < 0 then current_ttl = 0 end
local weighted = math.floor(previous_count * previous_ttl / expiry) + current_count
local granted = math.min(wanted, limit - weighted)
if granted > 0 then
    if redis.call('exists', KEYS[2]) == 1 then
        redis.call('incrby', KEYS[2], granted)
    else
        redis.call('set', KEYS[2], granted, 'PX', expiry * 2)
        current_ttl = expiry * 2
    end
    current_count = current_count + granted
else
    granted = 0
end
return {granted, previous_count, previous_ttl, current_count, current_ttl}
"""


@dataclass(frozen=True)
class Decision:
    """The outcome of one check; ``limit`` 0 means "not limited"."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # epoch seconds when at least one more request is allowed

    @property
    def retry_after(self) -> float:
        return max(1.0, self.reset_at - time.time())

    def headers(self) -> dict[str, str]:
        if not self.limit:
            return {}
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }


OPEN = Decision(allowed=True, limit=0, remaining=0, reset_at=0.0)


def max_slice(limit: int) -> int:
    return max(1, min(limit // 100, MAX_SLICE))


@dataclass
class _Lease:
    """A key's quota slice in this process."""

    limit: int
    tokens: int = 0
    expires: float = 0.0  # monotonic
    size: int = 1  # the next slice to ask for
    remaining: int = 0  # the window's remaining count when leased (after the slice)
    reset_at: float = 0.0
    denied_until: float = 0.0  # monotonic: the window was full


@dataclass
class _LocalWindow:
    """An in-process sliding window counter (the fallback while Redis is down)."""

    start: float = 0.0
    current: int = 0
    previous: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, limit: int, now: float) -> Decision:
        with self.lock:
            elapsed = now - self.start
            if elapsed >= WINDOW_S:
                self.previous = self.current if elapsed < 2 * WINDOW_S else 0
                self.current, self.start = 0, now - (elapsed % WINDOW_S)
                elapsed = now - self.start
            weighted = math.floor(self.previous * (WINDOW_S - elapsed) / WINDOW_S) + self.current
            allowed = weighted < limit
            if allowed:
                self.current += 1
            remaining = max(0, limit - weighted - (1 if allowed else 0))
        reset_in = WINDOW_S - elapsed if not allowed else 0.0
        return Decision(allowed, limit, remaining, time.time() + reset_in)


class RateLimiter:
    """Per-identifier limits per minute: leased from Redis, local while Redis is down."""

    def __init__(self, cache: Any, key_prefix: str = KEY_PREFIX) -> None:
        self.cache = cache
        self.key_prefix = key_prefix
        self._leases: dict[str, _Lease] = {}
        self._local: dict[str, _LocalWindow] = {}
        self._flight = SingleFlight()
        self._down_until = 0.0
        self._outage = False
        self._lock = threading.Lock()
        self._script: Any = None
        self._limiter: Any = None

    # -- keys (limits' layout) -------------------------------------------------------------
    def keys_for(self, identifier: str, limit: int) -> list[str]:
        """[previous window, current window]: ``limits``' names for RateLimitItemPerMinute(limit) (its
        ``key_for`` and RedisStorage's braces), spelt out so the hot path does not import ``limits``."""
        key = f"{self.key_prefix}:{{LIMITER/{identifier}/{limit}/1/minute}}"
        return [f"{key}/-1", key]

    @property
    def limiter(self) -> Any:
        """``limits``' own limiter over the same Redis windows (inspection, tests)."""
        if self._limiter is None:
            from limits.storage import RedisStorage
            from limits.strategies import SlidingWindowCounterRateLimiter

            storage = RedisStorage(
                self.cache.settings.redis_url,
                connection_pool=self.cache.client.connection_pool,
                key_prefix=self.key_prefix,
            )
            self._limiter = SlidingWindowCounterRateLimiter(storage)
        return self._limiter

    # -- the hot path ---------------------------------------------------------------------
    async def acquire(self, identifier: str, limit: int) -> Decision:
        """Count one request for ``identifier`` against ``limit`` per minute."""
        lease = self._leases.get(identifier)
        if lease is None or lease.limit != limit:
            if len(self._leases) >= MAX_KEYS:  # bounded: forgetting a lease only drops its unspent slice
                self._leases.clear()
            lease = self._leases[identifier] = _Lease(limit)
        for _ in range(LEASE_TRIES):
            now = time.monotonic()
            if lease.tokens > 0 and lease.expires > now:
                lease.tokens -= 1
                return Decision(True, limit, lease.remaining + lease.tokens, lease.reset_at)
            if lease.denied_until > now:
                return Decision(False, limit, 0, lease.reset_at)
            if now < self._down_until:
                return self._local_take(identifier, limit, now)
            try:
                await self._flight.run((identifier, limit), lambda: self._lease(identifier, lease))
            except REDIS_ERRORS as exc:
                self._failed(exc)
                return self._local_take(identifier, limit, now)
            # concurrent callers shared that lease; whoever found it spent leases again (a bigger slice)
        return Decision(False, limit, 0, lease.reset_at or time.time() + 1)

    async def _lease(self, identifier: str, lease: _Lease) -> None:
        now = time.monotonic()
        if lease.tokens > 0 and lease.expires > now:  # a concurrent lease just landed
            return
        size = lease.size
        if lease.expires > now and lease.tokens == 0 and not lease.denied_until:  # spent within its lease
            size = min(max_slice(lease.limit), size * 2)
        elif lease.expires <= now and lease.tokens > 0:  # expired unspent: ask for less
            size = max(1, size // 2)
        size = min(size, max_slice(lease.limit))
        client = self.cache.aio()
        keys = self.keys_for(identifier, lease.limit)
        if self._script is None or self._script.registered_client is not client:
            self._script = client.register_script(_LEASE)
        granted, prev_count, prev_ttl, cur_count, cur_ttl = await self._script(
            keys=keys, args=[lease.limit, WINDOW_S, size]
        )
        if self._outage:
            self._outage = False
            log.info("rate limiting through redis again")
        window = _window(
            lease.limit, int(prev_count or 0), int(prev_ttl or 0) / 1000, int(cur_count or 0), int(cur_ttl or 0) / 1000
        )
        lease.size = size
        lease.tokens = int(granted)
        lease.expires = time.monotonic() + LEASE_S
        lease.remaining, lease.reset_at = window
        lease.denied_until = 0.0 if granted else time.monotonic() + min(LEASE_S, max(0.01, window[1] - time.time()))

    def _local_take(self, identifier: str, limit: int, now: float) -> Decision:
        window = self._local.get(identifier)
        if window is None:
            if len(self._local) >= MAX_KEYS:
                self._local.clear()
            window = self._local.setdefault(identifier, _LocalWindow(start=now))
        return window.take(limit, now)

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._down_until = time.monotonic() + DOWN_FOR_S
            first, self._outage = not self._outage, True
        if first:
            log.warning(
                "rate limits enforced in-process (per process, not shared): redis unavailable: %s", type(exc).__name__
            )

    def clear(self, identifier: str, limit: int) -> None:
        from limits import RateLimitItemPerMinute

        self._leases.pop(identifier, None)
        self._local.pop(identifier, None)
        self.limiter.clear(RateLimitItemPerMinute(limit), identifier)


def _window(limit: int, prev_count: int, prev_ttl: float, cur_count: int, cur_ttl: float) -> tuple[int, float]:
    """(remaining, reset epoch seconds) of a sliding window counter, as ``limits``' get_window_stats."""
    weighted = prev_count * prev_ttl / WINDOW_S + cur_count
    remaining = max(0, limit - math.floor(weighted))
    reset_in = math.inf
    if prev_count:
        reset_in = prev_ttl % (WINDOW_S / prev_count)
    if cur_count:  # the current counter lives 2 windows; it becomes "previous" when its TTL reaches one
        reset_in = min(reset_in, cur_ttl - WINDOW_S if cur_ttl > WINDOW_S else cur_ttl)
    return remaining, time.time() + (reset_in if math.isfinite(reset_in) else 0.0)
