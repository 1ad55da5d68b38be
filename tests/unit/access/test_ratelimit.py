"""Unit tests of the rate-limit decision arithmetic and fail-open behaviour (no Redis)."""

from __future__ import annotations

import logging
import time

import pytest
from limits import RateLimitItemPerMinute

from shared.access.ratelimit import OPEN, Decision, RateLimiter, _decide
from shared.clients.cache import make_redis
from shared.settings import Settings


def test_headers() -> None:
    d = Decision(True, 10, 7, 1000.2)
    assert d.headers() == {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "7", "X-RateLimit-Reset": "1001"}
    assert OPEN.headers() == {} and OPEN.allowed


def test_retry_after_is_at_least_one_second() -> None:
    assert Decision(False, 1, 0, time.time() - 5).retry_after == 1.0
    assert 29 < Decision(False, 1, 0, time.time() + 30).retry_after <= 30


def test_decide_current_window_only() -> None:
    item = RateLimitItemPerMinute(3)
    # two hits in a window that started 10 s ago: the counter lives 120 s, 110 s are left
    d = _decide(item, True, [None, -2, b"2", 110_000])
    assert (d.allowed, d.limit, d.remaining) == (True, 3, 1)
    assert 49 < d.reset_at - time.time() <= 50


def test_decide_weights_the_previous_window() -> None:
    item = RateLimitItemPerMinute(10)
    # previous window had 10, half of it still counts (30 s left): weighted 5 + 2 current
    d = _decide(item, True, [b"10", 30_000, b"2", 90_000])
    assert d.remaining == 3


def test_decide_empty_window_resets_now() -> None:
    d = _decide(RateLimitItemPerMinute(5), True, [None, -2, None, -2])
    assert d.remaining == 5 and abs(d.reset_at - time.time()) < 1


def test_fails_open_fast_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env(environ={}, redis_url="redis://127.0.0.1:1/0")
    limiter = RateLimiter(make_redis(settings), settings.redis_url)  # the bounded client: no retries
    with caplog.at_level(logging.WARNING, logger="shared.access.ratelimit"):
        started = time.monotonic()
        decisions = [limiter.check("k", 1) for _ in range(20)]
        elapsed = time.monotonic() - started
    assert all(d is OPEN for d in decisions)
    assert elapsed < 0.5
    assert len([r for r in caplog.records if "failing open" in r.message]) == 1
