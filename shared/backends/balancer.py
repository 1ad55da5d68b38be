"""Spread a model's requests over its Triton backends, guarded by their circuit breakers.

Round robin over ``backend_urls``, skipping backends whose circuit is open or whose
last probe (recorded in Redis by the backends function) failed, with one retry on
another backend when a connection fails.

Breaker states and probe results live in Redis; the balancer keeps a local view of
them. The async path (``call_async``) never waits for Redis once a backend is known:
a view older than ``SNAPSHOT_TTL_S`` is used as is while one background read
refreshes it, so a circuit opened by another process is seen here within about
``SNAPSHOT_TTL_S`` plus one Redis round trip (this process's own failures are seen at
once). The first time a process meets a backend whose shared circuit is open (say,
after the whole stack restarted while Triton was down), it asks the backend's
readiness once and closes the circuit if it answers, instead of refusing traffic
until the reset timeout runs out. Outcomes are recorded off the event loop (pybreaker's
Redis storage is synchronous); a failure shared by several coalesced requests counts
once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.backends.breaker import Breakers, CircuitView, state_keys, view_from
from shared.backends.metrics import Recorder
from shared.backends.triton import is_backend_failure, is_connection_failure
from shared.clients.aio import spawn
from shared.errors import BackendTimeout, KinferError, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

PROBE_PREFIX = "kinfer:probe:"
SNAPSHOT_TTL_S = 0.2
MAX_ATTEMPTS = 2
FIRST_PROBE_TIMEOUT_S = 1.0
WAIT_POLL_S = 0.5  # how often a caller held by `Prefer: wait` asks a waking backend whether it is ready


def probe_key(url: str) -> str:
    return PROBE_PREFIX + url


@dataclass(frozen=True)
class Backend:
    """One backend as last seen: its circuit and whether its last probe passed (None = never probed)."""

    url: str
    circuit: CircuitView
    probe_ok: bool | None


class Balancer:
    """Picks backends for each call and feeds the outcome to breakers and metrics."""

    def __init__(
        self,
        breakers: Breakers,
        recorder: Recorder,
        snapshot_ttl_s: float = SNAPSHOT_TTL_S,
        ready: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.breakers = breakers
        self.recorder = recorder
        self.ttl = snapshot_ttl_s
        self.ready = ready
        self._seen: dict[str, tuple[float, Backend]] = {}
        self._met: set[str] = set()
        self._refreshing: dict[str, float] = {}
        self._turn = itertools.count()

    # -- state --------------------------------------------------------------------------
    def _keys(self, urls: list[str]) -> list[str]:
        return [k for u in urls for k in state_keys(u, self.breakers.prefix)] + [probe_key(u) for u in urls]

    @staticmethod
    def _parse(urls: list[str], values: list[Any]) -> list[Backend]:
        n = len(urls)
        return [
            Backend(u, view_from(u, values[i * 3 : i * 3 + 3]), _probe_ok(values[3 * n + i]))
            for i, u in enumerate(urls)
        ]

    def _keep(self, backend: Backend, now: float) -> None:
        self._seen[backend.url] = (now + self.ttl, backend)
        self._met.add(backend.url)

    def forget(self, url: str) -> None:
        self._seen.pop(url, None)

    # -- state (the event loop) --------------------------------------------------------------
    async def snapshot_async(self, urls: list[str]) -> list[Backend]:
        """Backends of ``urls`` from the local view; only a never-seen backend waits for Redis."""
        now = time.monotonic()
        found: dict[str, Backend] = {}
        missing, stale = [], []
        for u in urls:
            hit = self._seen.get(u)
            if hit is None:
                missing.append(u)
                continue
            found[u] = hit[1]
            if hit[0] <= now:
                stale.append(u)
        if stale:
            self._refresh_soon(stale, now)
        if missing:
            for backend in await self._read_async(missing):
                found[backend.url] = await self._first_sight(backend) if backend.url not in self._met else backend
                self._keep(found[backend.url], time.monotonic())
        return [found[u] for u in urls]

    async def _read_async(self, urls: list[str]) -> list[Backend]:
        b = self.breakers
        if b.redis_usable():
            try:
                return self._parse(urls, await b.cache.aio().mget(self._keys(urls)))
            except Exception as exc:  # redis errors: fall back to in-process breakers
                b.redis_failed(exc)
        return [Backend(u, b.local_view(u), None) for u in urls]

    def _refresh_soon(self, urls: list[str], now: float) -> None:
        due = [u for u in urls if self._refreshing.get(u, 0.0) < now - 1.0]
        if due:
            for u in due:
                self._refreshing[u] = now
            spawn(self._refresh(due), "breaker view refresh")

    async def _refresh(self, urls: list[str]) -> None:
        try:
            backends = await self._read_async(urls)
        finally:
            for u in urls:
                self._refreshing.pop(u, None)
        now = time.monotonic()
        for backend in backends:
            self._keep(backend, now)

    async def _first_sight(self, backend: Backend) -> Backend:
        """An open shared circuit met for the first time: close it if the backend answers readiness."""
        self._met.add(backend.url)
        if backend.circuit.state == "closed" or self.ready is None:
            return backend
        try:
            ready = await asyncio.wait_for(self.ready(backend.url), FIRST_PROBE_TIMEOUT_S)
        except TimeoutError:
            ready = False
        if not ready:
            return backend
        log.warning(
            "circuit breaker for a Triton backend was %s but it answers readiness; closing it", backend.circuit.state
        )
        await asyncio.to_thread(self.breakers.reset, backend.url)
        return Backend(backend.url, CircuitView(backend.url, shared=backend.circuit.shared), backend.probe_ok)

    async def wait_ready(self, urls: list[str], deadline: float, every_s: float = WAIT_POLL_S) -> bool:
        """Until ``deadline`` (monotonic), ask each backend's readiness; the first that answers has its circuit
        closed (it is back: the caller waiting for it should not wait out the breaker's reset). False at the
        deadline."""
        if self.ready is None:
            return False
        while time.monotonic() < deadline:
            for url in urls:
                timeout = max(0.05, min(FIRST_PROBE_TIMEOUT_S, deadline - time.monotonic()))
                try:
                    ready = await asyncio.wait_for(self.ready(url), timeout)
                except TimeoutError:
                    ready = False
                if ready:
                    await asyncio.to_thread(self.breakers.reset, url)
                    self.forget(url)
                    return True
            await asyncio.sleep(max(0.0, min(every_s, deadline - time.monotonic())))
        return False

    # -- choosing --------------------------------------------------------------------
    def choose(self, backends: list[Backend], label: str | None = None) -> list[Backend]:
        """Usable backends in round-robin order; CircuitOpen when every circuit is open."""
        closed = [b for b in backends if self.breakers.allows(b.circuit)]
        if not closed:
            raise self.breakers.open_error(
                min((b.circuit for b in backends), key=lambda v: v.remaining(self.breakers.reset_timeout)), label
            )
        usable = [b for b in closed if b.probe_ok is not False] or closed  # all probes failed: maybe stale
        start = next(self._turn) % len(usable)
        return usable[start:] + usable[:start]

    async def call_async(
        self, urls: list[str], attempt: Callable[[str], Awaitable[T]], count: bool = True, label: str | None = None
    ) -> T:
        """``attempt(url)`` on a chosen backend; one retry elsewhere when the connection failed. Breaker
        bookkeeping runs off the loop, and once warm no call waits for Redis.

        ``count=False`` keeps a successful call out of the request metrics (cached metadata reads).
        """
        if not urls:
            raise Unavailable("the model has no Triton backend configured")
        chosen = self._only_healthy(urls) or self.choose(await self.snapshot_async(urls), label)[:MAX_ATTEMPTS]
        for i, backend in enumerate(chosen):
            started = time.perf_counter()
            try:
                result = await attempt(backend.url)
            except KinferError as err:
                if not is_backend_failure(err):
                    raise
                if not getattr(err, "_kinfer_counted", False):  # one coalesced failure, many callers
                    err._kinfer_counted = True  # type: ignore[attr-defined]
                    seconds = time.perf_counter() - started
                    timed_out = isinstance(err, BackendTimeout)
                    hung = timed_out and not await self._answers(backend.url)
                    # a timeout from a backend that answers readiness is a slow model's (or a busy backend's):
                    # counted in the metrics, never towards the circuit that every model on the backend shares
                    # (one tenant's slow version opened it for all: 503 circuit_open for every model, 30 s)
                    slow = timed_out and not hung and self.ready is not None  # without a probe: cannot tell
                    trip = err.code != "model_not_loaded" and not slow
                    await asyncio.to_thread(self._failed, backend, err, seconds, trip, hung)
                if is_connection_failure(err) and i + 1 < len(chosen):
                    log.warning("retrying on another backend after: %s", err.message)
                    continue
                raise
            if count:
                self.recorder.record(backend.url, "success", time.perf_counter() - started)
            if backend.circuit.state != "closed" or backend.circuit.failures:
                await asyncio.to_thread(self.breakers.record_success, backend.url, backend.circuit)
                self.forget(backend.url)
            return result
        raise AssertionError("unreachable")

    def _only_healthy(self, urls: list[str]) -> list[Backend] | None:
        """The common case without the general machinery: one backend, freshly seen, circuit clean."""
        if len(urls) != 1:
            return None
        hit = self._seen.get(urls[0])
        if hit is None or hit[0] <= time.monotonic():
            return None
        backend = hit[1]
        circuit = backend.circuit
        return [backend] if circuit.state == "closed" and not circuit.failures else None

    async def _answers(self, url: str) -> bool:
        """Whether the backend answers readiness within FIRST_PROBE_TIMEOUT_S (True when it cannot be asked):
        after a timeout this tells a slow model (not the backend's failure) from a hung backend (its circuit
        opens)."""
        if self.ready is None:
            return True
        try:
            return await asyncio.wait_for(self.ready(url), FIRST_PROBE_TIMEOUT_S)
        except TimeoutError:
            return False

    def _failed(
        self, backend: Backend, err: KinferError, seconds: float, trip: bool = True, hung: bool = False
    ) -> None:
        """Count the failure; a model missing on one backend, or slow on it, does not trip that backend's
        breaker, a hung one (a timeout, then no answer to readiness) opens it at once."""
        self.recorder.record(backend.url, "failure", seconds)
        if trip:
            self.breakers.record_failure(backend.url, err)
            if hung:
                log.warning("a Triton backend timed out and does not answer readiness: opening its circuit now")
                self.breakers.trip(backend.url)
            self.forget(backend.url)


def _probe_ok(raw: Any) -> bool | None:
    if not raw:
        return None
    try:
        return bool(json.loads(raw).get("healthy"))
    except (ValueError, AttributeError):
        return None
