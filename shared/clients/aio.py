"""Event-loop-bound resources: async clients (grpc.aio channels, redis.asyncio pools) and futures
belong to the loop that created them.

A process normally runs one loop (uvicorn's), but tests and tools may run several one after
another (Starlette's TestClient outside a ``with`` block starts a loop per request). ``PerLoop``
keeps one instance per running loop and forgets the instances of loops that were closed, so a
client is never used from a loop it does not belong to. ``single_flight`` runs one coroutine per
key at a time on a loop and lets concurrent callers share its result. ``LoopThread`` gives
synchronous callers (the batch worker's threads, the probe) the same async clients: one loop on a
daemon thread that runs their coroutines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable
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


class LoopThread:
    """An event loop on a daemon thread (started on first use), so that threads can use the async clients:
    ``run(coro)`` executes ``coro`` there, in the caller's context (trace spans carry over), and waits;
    ``spawn(coro)`` does not wait."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        loop = self._running_loop()
        context = contextvars.copy_context()
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def start() -> None:
            task = loop.create_task(coro, context=context)

            def done(t: asyncio.Task[T]) -> None:
                if t.cancelled():
                    result.cancel()
                elif (exc := t.exception()) is not None:
                    result.set_exception(exc)
                else:
                    result.set_result(t.result())

            task.add_done_callback(done)

        loop.call_soon_threadsafe(start)
        return result

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """The result of ``coro`` run on this thread's loop (its exception raised here)."""
        if self._loop is not None and threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(f"LoopThread {self.name}: run() from its own loop would wait for itself")
        return self._submit(coro).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        """Run ``coro`` in the background on this loop; a failure is logged, never raised."""

        def done(f: concurrent.futures.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.debug("background %s failed: %s", what, type(f.exception()).__name__)

        self._submit(coro).add_done_callback(done)

    def close(self) -> None:
        """Stop the loop and its thread (a later ``run`` starts new ones)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()


class TimedFlush:
    """What a batching recorder shares: once something is pending, ``_arm`` flushes it when the interval ends,
    whether or not another call comes (on the running loop's executor, or a daemon timer outside a loop). The
    class sets ``flush_s``, ``_next_flush``, ``_armed`` and defines ``flush``."""

    flush_s: float
    _next_flush: float
    _armed: bool

    def flush(self) -> object: ...

    def _arm(self) -> None:
        """Flush what is pending when the interval ends, whether or not another request comes."""
        self._armed = True
        delay = max(0.0, self._next_flush - time.monotonic())
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            timer = threading.Timer(delay, self._timed_flush)
            timer.daemon = True
            timer.start()
        else:
            loop.call_later(delay, loop.run_in_executor, None, self._timed_flush)

    def _timed_flush(self) -> None:
        self._armed = False
        self._next_flush = time.monotonic() + self.flush_s
        self.flush()
