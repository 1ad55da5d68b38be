"""Event-loop-bound resources: async clients (grpc.aio channels, redis.asyncio pools) and futures
belong to the loop that created them.

A process normally runs one loop (uvicorn's), but tests and tools may run several one after
another (Starlette's TestClient outside a ``with`` block starts a loop per request). ``PerLoop``
keeps one instance per running loop and forgets the instances of loops that were closed, so a
client is never used from a loop it does not belong to. ``single_flight`` runs one coroutine per
key at a time on a loop and lets concurrent callers share its result.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class PerLoop(Generic[T]):
    """``factory()`` once per running event loop; ``get()`` must be called on a loop."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._items: dict[int, tuple[asyncio.AbstractEventLoop, T]] = {}
        self._last: tuple[asyncio.AbstractEventLoop, T] | None = None

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0] is loop:
            return last[1]
        found = self._items.get(id(loop))
        if found is None or found[0] is not loop:
            self._forget_closed()
            found = self._items[id(loop)] = (loop, self._factory())
        self._last = found
        return found[1]

    def current(self) -> T | None:
        """The instance of the running loop, if one was made (None outside a loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        found = self._items.get(id(loop))
        return found[1] if found is not None and found[0] is loop else None

    def _forget_closed(self) -> None:
        for key, (loop, _) in list(self._items.items()):
            if loop.is_closed():
                del self._items[key]
        if self._last is not None and self._last[0].is_closed():
            self._last = None

    def drain(self) -> list[T]:
        """Every instance, forgotten (the caller closes them where it can)."""
        items = [item for _, item in self._items.values()]
        self._items.clear()
        self._last = None
        return items


class SingleFlight:
    """Concurrent callers of ``run(key, fn)`` on one loop share one execution of ``fn()``."""

    def __init__(self) -> None:
        self._running: dict[tuple[int, Hashable], asyncio.Future[Any]] = {}

    async def run(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        slot = (id(loop), key)
        running = self._running.get(slot)
        if running is not None and running.get_loop() is loop and not running.done():
            return await asyncio.shield(running)
        future: asyncio.Future[Any] = asyncio.ensure_future(fn())
        self._running[slot] = future
        future.add_done_callback(lambda f: self._done(slot, f))
        return await asyncio.shield(future)

    def _done(self, slot: tuple[int, Hashable], future: asyncio.Future[Any]) -> None:
        if self._running.get(slot) is future:
            del self._running[slot]
        if not future.cancelled():
            future.exception()  # retrieved: a failure every caller saw is not "never retrieved"


_background: set[asyncio.Future[Any]] = set()  # the loop keeps only weak references to tasks


def spawn(coro: Awaitable[Any], what: str) -> asyncio.Future[Any]:
    """Run ``coro`` in the background; a failure is logged, never raised into anyone."""
    future = asyncio.ensure_future(coro)
    _background.add(future)

    def done(f: asyncio.Future[Any]) -> None:
        _background.discard(f)
        if not f.cancelled() and f.exception() is not None:
            log.warning("background %s failed: %s", what, type(f.exception()).__name__)

    future.add_done_callback(done)
    return future


async def in_thread(fn: Callable[..., R], *args: Any) -> R:
    """``fn(*args)`` in the worker thread pool the web server bounds (anyio's, SERVER_CONCURRENCY), so
    that domain code can do blocking work from the event loop without knowing the web framework."""
    import anyio.to_thread

    return await anyio.to_thread.run_sync(functools.partial(fn, *args))
