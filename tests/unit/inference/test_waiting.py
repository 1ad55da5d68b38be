"""``Prefer: wait=N``: parsing (RFC 7240: unknown or malformed preferences are ignored) and the hold
itself with a fake balancer: retried while the backend is down, given up at the deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from shared.errors import BackendTimeout, CircuitOpen, InvalidInput, Unavailable
from shared.inference.waiting import call_waiting, preferred_wait


@pytest.mark.parametrize(
    "header,expected",
    [
        (None, 0.0),
        ("", 0.0),
        ("wait=10", 10.0),
        ("respond-async, wait=30", 30.0),
        ("Wait = 5 ; foo=bar", 5.0),
        ('wait="7"', 7.0),
        ("wait=9999", 240.0),
        ("wait=-1", 0.0),
        ("wait=1.5", 0.0),
        ("wait=\u0663", 0.0),
        ("wait=" + "9" * 50, 0.0),
        ("return=minimal", 0.0),
    ],
)
def test_the_preferred_wait_is_whole_seconds_bounded_by_wait_max(header: str | None, expected: float) -> None:
    assert preferred_wait(header, 240.0) == expected


class _Balancer:
    """Down for ``down_s``, then answers; ``wait_ready`` sees it come back."""

    def __init__(self, down_s: float, error: Exception) -> None:
        self.up_at, self.error, self.calls, self.probes = time.monotonic() + down_s, error, 0, 0

    async def call_async(self, urls: list[str], attempt: Any, label: str) -> str:
        self.calls += 1
        if time.monotonic() < self.up_at:
            raise self.error
        return "answer"

    async def wait_ready(self, urls: list[str], deadline: float) -> bool:
        while time.monotonic() < deadline:
            self.probes += 1
            if time.monotonic() >= self.up_at:
                return True
            await asyncio.sleep(0.01)
        return False


@pytest.mark.parametrize("error", [Unavailable("down", retry_after=1), CircuitOpen("open"), BackendTimeout("slow")])
def test_a_caller_who_waits_gets_the_answer_once_the_backend_is_back(error: Exception) -> None:
    balancer = _Balancer(0.2, error)
    answer = asyncio.run(call_waiting(balancer, ["t:1"], None, "m", wait_s=5))  # type: ignore[arg-type]
    assert answer == "answer" and balancer.calls == 2 and balancer.probes >= 1


def test_without_waiting_or_past_the_deadline_the_503_comes_back() -> None:
    for wait in (0.0, 0.1):
        balancer = _Balancer(5, Unavailable("down", retry_after=1))
        started = time.monotonic()
        with pytest.raises(Unavailable):
            asyncio.run(call_waiting(balancer, ["t:1"], None, "m", wait_s=wait))  # type: ignore[arg-type]
        assert time.monotonic() - started < wait + 1.0


def test_a_callers_own_error_is_never_held() -> None:
    balancer = _Balancer(5, InvalidInput("bad input", field="input"))
    with pytest.raises(InvalidInput):
        asyncio.run(call_waiting(balancer, ["t:1"], None, "m", wait_s=30))  # type: ignore[arg-type]
    assert balancer.calls == 1 and balancer.probes == 0
