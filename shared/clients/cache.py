"""Redis access that degrades instead of failing.

One redis client per process (bytes, no ``decode_responses``, so pybreaker's
storage can share it), with short socket timeouts and a bounded retry. After a
failure the cache stays "down" for ``DOWN_FOR_S`` so an outage costs callers
microseconds, not a connect timeout per request. ``aio()`` is the same
configuration as a ``redis.asyncio`` client for the running event loop (the
async hot path: rate-limit leases, the breaker view refresh).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, TypedDict

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.clients.aio import PerLoop
from shared.settings import Settings

log = logging.getLogger(__name__)

DOWN_FOR_S = 1.0
REDIS_ERRORS = (redis.RedisError, OSError)


class _RedisOptions(TypedDict):
    socket_timeout: float
    socket_connect_timeout: float
    retry_on_error: list[type[Exception]]
    health_check_interval: int
    max_connections: int


def _options(settings: Settings) -> _RedisOptions:
    timeout = settings.redis_timeout_s
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry_on_error": [],
        "health_check_interval": 0,
        "max_connections": 64,
    }


def make_redis(settings: Settings) -> redis.Redis:
    """A redis client whose failures surface in milliseconds (redis-py 8 retries ~10 times by default)."""
    return redis.Redis.from_url(settings.redis_url, retry=Retry(NoBackoff(), 0), **_options(settings))


def make_async_redis(settings: Settings) -> Any:
    """``make_redis`` as a ``redis.asyncio`` client (bound to the event loop it is first used on)."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry as AsyncRetry

    return aioredis.Redis.from_url(settings.redis_url, retry=AsyncRetry(NoBackoff(), 0), **_options(settings))


# Fill a cache key only if no registry write happened since the reader looked
# (KEYS[1] = value key, KEYS[2] = generation key; ARGV = value, generation, ttl).
_FILL_IF_CURRENT = """
local gen = redis.call('GET', KEYS[2]) or '0'
if gen == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[3]))
  return 1
end
return 0
"""


class Cache:
    """JSON values in Redis, with a generation counter that keeps read-through fills from going stale."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.client = client or make_redis(settings)
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._fill = self.client.register_script(_FILL_IF_CURRENT)
        self._aio = PerLoop(lambda: make_async_redis(settings))

    def aio(self) -> Any:
        """The ``redis.asyncio`` client of the running event loop."""
        return self._aio.get()

    # -- availability -------------------------------------------------------
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, what: str, exc: Exception) -> None:
        with self._lock:
            first = self.available()
            self._down_until = time.monotonic() + DOWN_FOR_S
        if first:
            log.warning("redis unavailable during %s: %s", what, type(exc).__name__)

    def ping(self) -> bool:
        try:
            ok = bool(self.client.ping())
        except REDIS_ERRORS as exc:
            self._failed("ping", exc)
            return False
        self._down_until = 0.0
        return ok

    # -- read-through ---------------------------------------------------------
    def lookup(self, key: str, gen_key: str) -> tuple[Any | None, str | None]:
        """(cached value or None, generation seen); generation None means Redis is unusable."""
        if not self.available():
            return None, None
        try:
            raw, gen = self.client.mget(key, gen_key)
        except REDIS_ERRORS as exc:
            self._failed("lookup", exc)
            return None, None
        gen_text = gen.decode() if isinstance(gen, bytes) else (gen or "0")
        return (json.loads(raw) if raw else None), gen_text

    def fill(self, key: str, gen_key: str, value: Any, gen: str | None) -> None:
        """Store ``value`` unless a write bumped ``gen_key`` since ``gen`` was read."""
        if gen is None or not self.available():
            return
        try:
            self._fill(keys=[key, gen_key], args=[json.dumps(value, default=str), gen, self.settings.cache_ttl_s])
        except REDIS_ERRORS as exc:
            self._failed("fill", exc)

    def invalidate(self, gen_key: str, *keys: str, announce: tuple[str, str] | None = None) -> bool:
        """Bump the generation and drop ``keys`` (and publish ``announce`` = (channel, message));
        False when Redis could not be told."""
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.incr(gen_key)
            if keys:
                pipe.delete(*keys)
            if announce is not None:
                pipe.publish(*announce)
            pipe.execute()
            return True
        except REDIS_ERRORS as exc:
            self._failed("invalidate", exc)
            return False

    def subscribe(self, channel: str) -> Subscription:
        """A subscription to ``channel`` on its own connection (no short read timeout)."""
        return Subscription(self.settings, channel)

    def close(self) -> None:
        try:
            self.client.close()
        except REDIS_ERRORS:
            pass
        self._aio.drain()  # async pools close with their loop; nothing to await from here


class Subscription:
    """Redis pub/sub for waking a loop early; every failure is "nothing arrived" (callers also poll)."""

    def __init__(self, settings: Settings, channel: str) -> None:
        self.channel = channel
        self._client = redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=2,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        self._pubsub: Any = None

    def wait(self, timeout: float) -> list[str]:
        """Messages that arrive within ``timeout`` seconds (at least one, then whatever is queued)."""
        try:
            if self._pubsub is None:
                self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                self._pubsub.subscribe(self.channel)
            first = self._pubsub.get_message(timeout=timeout)
            messages = [first] if first else []
            while messages and (more := self._pubsub.get_message(timeout=0)):
                messages.append(more)
        except REDIS_ERRORS:
            self._reset()
            time.sleep(timeout)
            return []
        return [
            m["data"].decode() if isinstance(m["data"], bytes) else str(m["data"])
            for m in messages
            if m.get("type") == "message"
        ]

    def _reset(self) -> None:
        try:
            if self._pubsub is not None:
                self._pubsub.close()
        except REDIS_ERRORS:
            pass
        self._pubsub = None

    def close(self) -> None:
        self._reset()
        try:
            self._client.close()
        except REDIS_ERRORS:
            pass
