"""Unit tests of the rate-limit arithmetic, slice sizes, the in-process fallback and its failover (no Redis)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from shared.access.ratelimit import OPEN, Decision, RateLimiter, _LocalWindow, _window, max_slice
from shared.clients.cache import Cache
from shared.settings import Settings


def test_headers() -> None:
    d = Decision(True, 10, 7, 1000.2)
    assert d.headers() == {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "7", "X-RateLimit-Reset": "1001"}
    assert OPEN.headers() == {} and OPEN.allowed


def test_retry_after_is_at_least_one_second() -> None:
    assert Decision(False, 1, 0, time.time() - 5).retry_after == 1.0
    assert 29 < Decision(False, 1, 0, time.time() + 30).retry_after <= 30


def test_window_current_only() -> None:
    # two hits in a window that started 10 s ago: the counter lives 120 s, 110 s are left
    remaining, reset_at = _window(3, 0, 0, 2, 110)
    assert remaining == 1 and 49 < reset_at - time.time() <= 50


def test_window_weights_the_previous_one() -> None:
    # previous window had 10, half of it still counts (30 s left): weighted 5 + 2 current
    assert _window(10, 10, 30, 2, 90)[0] == 3


def test_empty_window_resets_now() -> None:
    remaining, reset_at = _window(5, 0, 0, 0, 0)
    assert remaining == 5 and abs(reset_at - time.time()) < 1


def test_window_keys_are_the_ones_limits_uses() -> None:
    from limits import RateLimitItemPerMinute
    from limits.storage import RedisStorage

    limiter = RateLimiter(Cache(Settings.from_env(environ={})))
    storage = RedisStorage("redis://127.0.0.1:1/0", key_prefix="kinfer:rl")
    key = RateLimitItemPerMinute(37).key_for("a key/with:odd chars")
    assert limiter.keys_for("a key/with:odd chars", 37) == [
        storage.prefixed_key(storage._previous_window_key(key)),
        storage.prefixed_key(storage._current_window_key(key)),
    ]


def test_slices_are_a_hundredth_of_the_limit_at_most() -> None:
    assert [max_slice(n) for n in (1, 99, 100, 600, 10_000_000)] == [1, 1, 1, 6, 1000]


def test_local_window_admits_the_limit_then_refuses_until_it_slides() -> None:
    window, now = _LocalWindow(start=1000.0), 1000.0
    decisions = [window.take(3, now + i) for i in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert 55 < decisions[3].reset_at - time.time() <= 60
    # half a window later the previous 3 still weigh in by half (1); two windows later they are gone
    assert [window.take(3, now + 90).allowed for _ in range(3)] == [True, True, False]
    assert [window.take(3, now + 200).allowed for _ in range(4)] == [True, True, True, False]


def test_redis_down_means_in_process_limits_fast_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env(environ={}, redis_url="redis://127.0.0.1:1/0")
    limiter = RateLimiter(Cache(settings))

    async def twenty() -> list[Decision]:
        return [await limiter.acquire("k", 5) for _ in range(20)]

    with caplog.at_level(logging.WARNING, logger="shared.access.ratelimit"):
        started = time.monotonic()
        decisions = asyncio.run(twenty())
        elapsed = time.monotonic() - started
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 15
    assert decisions[0].headers()["X-RateLimit-Limit"] == "5"
    assert elapsed < 0.5
    assert len([r for r in caplog.records if "in-process" in r.message]) == 1
