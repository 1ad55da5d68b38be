"""Callers who will wait through a cold start: ``Prefer: wait=N`` (RFC 7240).

A request that carries it and meets a backend that is down (503: unavailable, or its circuit
open) or slow to answer (504) is held, up to N seconds and never past WAIT_MAX_S, while the
balancer asks the backend's readiness every half second; once it answers, its circuit closes and
the request runs. Without the preference the caller gets the 503 with ``Retry-After`` at once.
Inference has no side effects, so running it again is safe.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from shared.errors import KinferError

if TYPE_CHECKING:
    from shared.backends.balancer import Balancer

T = TypeVar("T")
WAKING = frozenset({503, 504})


def preferred_wait(prefer: str | None, max_s: float) -> float:
    """The seconds a ``Prefer`` header asks to wait (``wait=N``), at most ``max_s``; 0 when absent or not
    a whole number of seconds (an unknown or malformed preference is ignored, as RFC 7240 says)."""
    if not prefer:
        return 0.0
    for preference in prefer.split(","):
        token = preference.split(";", 1)[0].strip()
        key, _, value = token.partition("=")
        value = value.strip().strip('"')
        if key.strip().lower() == "wait" and value.isascii() and value.isdigit() and len(value) <= 6:
            return float(min(int(value), max_s))
    return 0.0


async def call_waiting(
    balancer: Balancer, urls: list[str], attempt: Callable[[str], Awaitable[T]], label: str, wait_s: float
) -> T:
    """``balancer.call_async``, held up to ``wait_s`` seconds while every backend of ``urls`` is down."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await balancer.call_async(urls, attempt, label=label)
        except KinferError as exc:
            if exc.status not in WAKING or time.monotonic() >= deadline:
                raise
            if not await balancer.wait_ready(urls, deadline):
                raise
