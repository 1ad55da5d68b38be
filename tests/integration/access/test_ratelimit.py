"""Leased rate limits on a real Redis: slices grow only under load, two processes share one window, and the
over-admission stays within one slice per process."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from limits import RateLimitItemPerMinute

from shared.access import ratelimit
from shared.access.ratelimit import RateLimiter, max_slice
from shared.clients.cache import Cache

pytestmark = pytest.mark.integration


def _limiter(base_settings: Any) -> RateLimiter:
    return RateLimiter(Cache(base_settings))


def _counted(limiter: RateLimiter, key: str, limit: int) -> int:
    stats = limiter.limiter.get_window_stats(RateLimitItemPerMinute(limit), key)
    return limit - stats.remaining


def test_a_key_used_now_and_then_leases_one_request_at_a_time(
    base_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "LEASE_S", 0.05)
    limiter, key = _limiter(base_settings), f"slow-{uuid.uuid4().hex}"

    async def now_and_then() -> list[bool]:
        allowed = []
        for _ in range(5):
            allowed.append((await limiter.acquire(key, 600)).allowed)
            await asyncio.sleep(0.1)
        return allowed

    assert asyncio.run(now_and_then()) == [True] * 5
    assert _counted(limiter, key, 600) == 5  # nothing leased and left unused


def test_slices_grow_under_load_so_few_requests_wait_for_redis(base_settings: Any) -> None:
    limiter, key = _limiter(base_settings), f"busy-{uuid.uuid4().hex}"
    leases = 0
    real = limiter._lease

    async def counting(identifier: str, lease: Any) -> None:
        nonlocal leases
        leases += 1
        await real(identifier, lease)

    limiter._lease = counting  # type: ignore[method-assign]

    async def burst() -> list[bool]:
        return [(await limiter.acquire(key, 100_000)).allowed for _ in range(200)]

    assert all(asyncio.run(burst()))
    assert leases <= 12  # 1, 2, 4, ... 128: a handful of round trips for 200 requests
    assert 200 <= _counted(limiter, key, 100_000) <= 200 + max_slice(100_000)


def test_two_processes_share_the_window_within_one_slice_each(base_settings: Any) -> None:
    limit, key = 300, f"shared-{uuid.uuid4().hex}"
    a, b = _limiter(base_settings), _limiter(base_settings)

    async def both() -> list[bool]:
        out = []
        for _ in range(250):
            out += [(await a.acquire(key, limit)).allowed, (await b.acquire(key, limit)).allowed]
        return out

    started = time.monotonic()
    admitted = sum(asyncio.run(both()))
    assert time.monotonic() - started < 30
    assert limit - 2 * max_slice(limit) <= admitted <= limit + 2 * max_slice(limit)
    refused = asyncio.run(a.acquire(key, limit))
    assert not refused.allowed and refused.remaining == 0 and refused.retry_after >= 1
