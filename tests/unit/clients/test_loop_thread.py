"""``LoopThread``: threads run coroutines on one background event loop (the batch worker's way to the async
Triton client): results and exceptions come back, the caller's context variables carry over, calls from
many threads overlap on the loop, and a call from the loop itself is refused instead of deadlocking."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.clients.aio import LoopThread

REQUEST = contextvars.ContextVar("request", default="none")


@pytest.fixture
def loop() -> LoopThread:
    found = LoopThread("test-loop")
    yield found  # type: ignore[misc]
    found.close()


def test_a_result_and_an_exception_come_back_to_the_calling_thread(loop: LoopThread) -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def fail() -> None:
        raise ValueError("from the loop")

    assert loop.run(double(21)) == 42
    with pytest.raises(ValueError, match="from the loop"):
        loop.run(fail())


def test_the_callers_context_carries_over(loop: LoopThread) -> None:
    async def seen() -> str:
        return REQUEST.get()

    token = REQUEST.set("req-7")
    try:
        assert loop.run(seen()) == "req-7"
    finally:
        REQUEST.reset(token)
    assert loop.run(seen()) == "none"


def test_calls_from_many_threads_overlap_on_one_loop(loop: LoopThread) -> None:
    threads: set[int] = set()

    async def nap() -> None:
        threads.add(threading.get_ident())
        await asyncio.sleep(0.2)

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: loop.run(nap()), range(8)))
    assert time.monotonic() - started < 1.0  # 8 x 0.2 s in sequence would be 1.6 s
    assert len(threads) == 1


def test_a_call_from_the_loop_itself_is_refused(loop: LoopThread) -> None:
    async def inner() -> int:
        return 1

    async def outer() -> str:
        try:
            loop.run(inner())
        except RuntimeError as exc:
            return str(exc)
        return "ran"

    assert "wait for itself" in loop.run(outer())


def test_spawn_does_not_wait_and_a_closed_loop_starts_again(loop: LoopThread) -> None:
    done = threading.Event()

    async def later() -> None:
        await asyncio.sleep(0.05)
        done.set()

    loop.spawn(later(), "test")
    assert not done.is_set() and done.wait(2)
    loop.close()

    async def one() -> int:
        return 1

    assert loop.run(one()) == 1
