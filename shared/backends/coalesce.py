"""Request coalescing: concurrent single-row requests for one model version on one backend become
one Triton request (up to the model's ``max_batch_size`` rows).

Triton's cost per request barely depends on its rows, and so does ours per gRPC call; under
concurrency merging rows is the cheapest way to serve more requests on the same cores.

When does a batch leave? A request that finds no open batch for its key opens one. While
fewer than ``PIPELINE`` merged requests for the key are in flight, the batch is sent at the
next turn of the event loop (it only gathers requests that arrived together, so a lone
request waits no extra time). Otherwise it waits until an in-flight request for the key
comes back, or until ``COALESCE_WAIT_MS`` passed, or until it is full, whichever is first.

Each caller gets its own row back. A failure of the merged request reaches every caller,
with one exception: when Triton rejects the merged input (a caller error), each request is
retried alone, so one caller's bad input never fails another's request. Rows per Triton
request are counted by ``AsyncTriton`` (``kinfer_backend_request_rows``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.backends.triton import ModelInfo
from shared.errors import InvalidInput, Unprocessable

PIPELINE = 2  # merged requests in flight per key before new ones wait for one to come back

Send = Callable[
    [str, ModelInfo, Mapping[str, np.ndarray[Any, Any]], Mapping[str, str] | None, str | None, str | None],
    Awaitable[dict[str, np.ndarray[Any, Any]]],
]


@dataclass
class _Batch:
    url: str
    info: ModelInfo
    version: str | None
    label: str | None
    headers: Mapping[str, str] | None
    parts: list[Mapping[str, np.ndarray[Any, Any]]] = field(default_factory=list)
    waiters: list[asyncio.Future[dict[str, np.ndarray[Any, Any]]]] = field(default_factory=list)
    timer: asyncio.Handle | None = None


class Coalescer:
    """Merges single-row requests per (url, model, version, row shapes); one instance per event loop."""

    def __init__(self, send: Send, wait_s: float) -> None:
        self.send = send
        self.wait_s = wait_s
        self._open: dict[tuple[Any, ...], _Batch] = {}
        self._inflight: dict[tuple[Any, ...], int] = {}

    @staticmethod
    def eligible(info: ModelInfo, arrays: Mapping[str, np.ndarray[Any, Any]]) -> bool:
        return info.max_batch_size > 1 and all(a.ndim >= 1 and a.shape[0] == 1 for a in arrays.values())

    async def infer(
        self,
        url: str,
        info: ModelInfo,
        arrays: Mapping[str, np.ndarray[Any, Any]],
        headers: Mapping[str, str] | None = None,
        version: str | None = None,
        label: str | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run one single-row request, merged with others when they arrive together."""
        if self.wait_s <= 0 or not self.eligible(info, arrays):
            return await self.send(url, info, arrays, headers, version, label)
        if len(arrays) == 1:
            name, array = next(iter(arrays.items()))
            key: tuple[Any, ...] = (url, info.name, version, name, array.shape[1:], array.dtype.str)
        else:
            key = (url, info.name, version, *((n, a.shape[1:], a.dtype.str) for n, a in sorted(arrays.items())))
        loop = asyncio.get_running_loop()
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch(url, info, version, label, headers)
            if self._inflight.get(key, 0) < PIPELINE:
                batch.timer = loop.call_soon(self._flush, key, batch)
            else:
                batch.timer = loop.call_later(self.wait_s, self._flush, key, batch)
        waiter: asyncio.Future[dict[str, np.ndarray[Any, Any]]] = loop.create_future()
        batch.parts.append(arrays)
        batch.waiters.append(waiter)
        if len(batch.parts) >= info.max_batch_size:
            self._flush(key, batch)
        return await waiter

    def _flush(self, key: tuple[Any, ...], batch: _Batch) -> None:
        if self._open.get(key) is not batch:
            return  # already sent
        del self._open[key]
        if batch.timer is not None:
            batch.timer.cancel()
        self._inflight[key] = self._inflight.get(key, 0) + 1
        task = asyncio.ensure_future(self._run(key, batch))
        _running.add(task)
        task.add_done_callback(_running.discard)

    async def _run(self, key: tuple[Any, ...], batch: _Batch) -> None:
        try:
            await self._send_batch(batch)
        finally:
            left = self._inflight[key] - 1
            if left:
                self._inflight[key] = left
            else:
                del self._inflight[key]
            waiting = self._open.get(key)
            if waiting is not None and left < PIPELINE:
                self._flush(key, waiting)

    async def _send_batch(self, batch: _Batch) -> None:
        live = [i for i, w in enumerate(batch.waiters) if not w.done()]  # a cancelled caller needs no row
        if not live:
            return
        parts = [batch.parts[i] for i in live]
        waiters = [batch.waiters[i] for i in live]
        arrays = parts[0] if len(parts) == 1 else {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        try:
            outputs = await self.send(batch.url, batch.info, arrays, batch.headers, batch.version, batch.label)
        except (InvalidInput, Unprocessable) as exc:  # a caller's input or the model failing on one
            if len(parts) == 1:
                raise_into(waiters, exc)
            else:  # somebody's input: each on its own, so the others still get their answer
                await asyncio.gather(*(self._alone(batch, p, w) for p, w in zip(parts, waiters, strict=True)))
            return
        except Exception as exc:  # every caller shares the backend failure (one exception object)
            raise_into(waiters, exc)
            return
        except BaseException as exc:  # cancelled: the callers must not hang
            raise_into(waiters, exc)
            raise
        for row, waiter in enumerate(waiters):
            if not waiter.done():
                waiter.set_result({name: a[row : row + 1] for name, a in outputs.items()})

    async def _alone(
        self,
        batch: _Batch,
        part: Mapping[str, np.ndarray[Any, Any]],
        waiter: asyncio.Future[dict[str, np.ndarray[Any, Any]]],
    ) -> None:
        try:
            result = await self.send(batch.url, batch.info, part, batch.headers, batch.version, batch.label)
        except Exception as exc:
            raise_into([waiter], exc)
            return
        if not waiter.done():
            waiter.set_result(result)


_running: set[asyncio.Future[Any]] = set()  # the loop keeps only weak references to tasks


def raise_into(waiters: list[asyncio.Future[Any]], exc: BaseException) -> None:
    """The same exception object for every waiter (the balancer counts it against the breaker once)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(exc)
