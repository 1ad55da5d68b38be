"""Per-key rate limiting in Redis with the ``limits`` library (sliding window counter).

The sliding window counter keeps two counters per key (O(1) memory whatever the
limit), unlike the moving window's list of one entry per request. ``check``
costs one Redis round trip: it pipelines the library's own two Lua scripts
(acquire, then read the window) by ``EVALSHA`` with the library's key layout, so
``limits``' limiter sees the same state (``limiter.get_window_stats`` agrees).

Redis down means fail open: the request goes through unlimited, the outage is
logged once, and Redis is not tried again for ``DOWN_FOR_S`` so an outage costs
microseconds per request, not a timeout.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

log = logging.getLogger(__name__)

KEY_PREFIX = "kinfer:rl"
DOWN_FOR_S = 1.0
REDIS_ERRORS = (redis.RedisError, OSError)


@dataclass(frozen=True)
class Decision:
    """The outcome of one check; ``limit`` 0 means "not limited" (Redis unavailable)."""

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
        return {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Reset": str(math.ceil(self.reset_at))}


OPEN = Decision(allowed=True, limit=0, remaining=0, reset_at=0.0)


class RateLimiter:
    """Sliding-window-counter limits per identifier, stored in Redis through ``limits``."""

    def __init__(self, client: redis.Redis, redis_url: str, key_prefix: str = KEY_PREFIX) -> None:
        # Share the bounded pool (short timeouts, no retries) of our one redis client.
        self.client = client
        self.storage = RedisStorage(redis_url, connection_pool=client.connection_pool, key_prefix=key_prefix)
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self._down_until = 0.0
        self._outage = False
        self._lock = threading.Lock()

    def check(self, identifier: str, per_minute: int) -> Decision:
        """Count one request for ``identifier`` against ``per_minute``; fail open when Redis is down."""
        if time.monotonic() < self._down_until:
            return OPEN
        item = RateLimitItemPerMinute(per_minute)
        try:
            acquired, window = self._acquire(item, identifier)
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return OPEN
        if self._outage:
            self._outage = False
            log.info("rate limiting restored: redis is reachable again")
        return _decide(item, bool(acquired), window)

    def _acquire(self, item: Any, identifier: str) -> tuple[Any, Any]:
        key = item.key_for(identifier)
        keys = [self.storage.prefixed_key(self.storage._previous_window_key(key)),
                self.storage.prefixed_key(self.storage._current_window_key(key))]
        expiry = item.get_expiry()
        scripts = (self.storage.lua_acquire_sliding_window, self.storage.lua_sliding_window)
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            pipe.evalsha(scripts[0].sha, 2, *keys, item.amount, expiry, 1)
            pipe.evalsha(scripts[1].sha, 2, *keys, expiry)
            try:
                acquired, window = pipe.execute()
                return acquired, window
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                for script in scripts:  # Redis restarted or was flushed: load once, retry
                    script.sha = self.client.script_load(script.script)
        raise AssertionError("unreachable")

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            self._down_until = time.monotonic() + DOWN_FOR_S
            first, self._outage = not self._outage, True
        if first:
            log.warning("rate limiting disabled (failing open): redis unavailable: %s", type(exc).__name__)

    def clear(self, identifier: str, per_minute: int) -> None:
        self.limiter.clear(RateLimitItemPerMinute(per_minute), identifier)


def _decide(item: Any, acquired: bool, window: Any) -> Decision:
    """Remaining and reset from the window, as ``limits``' get_window_stats computes them."""
    prev_count, prev_ttl = int(window[0] or 0), max(0.0, float(window[1] or 0)) / 1000
    cur_count, cur_ttl = int(window[2] or 0), max(0.0, float(window[3] or 0)) / 1000
    expiry = item.get_expiry()
    weighted = prev_count * prev_ttl / expiry + cur_count
    remaining = max(0, item.amount - math.floor(weighted))
    now = time.time()
    reset_in = math.inf
    if prev_count:
        reset_in = prev_ttl % (expiry / prev_count)
    if cur_count:  # the current counter lives 2 windows; it becomes "previous" when its TTL reaches one
        reset_in = min(reset_in, cur_ttl - expiry if cur_ttl > expiry else cur_ttl)
    reset_at = now + (reset_in if math.isfinite(reset_in) else 0.0)
    return Decision(allowed=acquired, limit=item.amount, remaining=remaining, reset_at=reset_at)

