"""Spread a model's requests over its Triton backends, guarded by their circuit breakers.

Round robin over ``backend_urls``, skipping backends whose circuit is open or whose
last probe (recorded in Redis by the backends function) failed, with one retry on
another backend when a connection fails. Breaker states and probe results of a
model's backends are read in one Redis MGET and kept in-process for
``SNAPSHOT_TTL_S``: a circuit opened by another process is seen here at most that
late (its own failures are seen at once), in exchange for no Redis round trip on
most requests.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.backends.breaker import Breakers, CircuitView, state_keys
from shared.backends.metrics import Recorder
from shared.backends.triton import is_backend_failure, is_connection_failure
from shared.errors import KinferError, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

PROBE_PREFIX = "kinfer:probe:"
SNAPSHOT_TTL_S = 0.2
MAX_ATTEMPTS = 2


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

    def __init__(self, breakers: Breakers, recorder: Recorder, snapshot_ttl_s: float = SNAPSHOT_TTL_S) -> None:
        self.breakers = breakers
        self.recorder = recorder
        self.ttl = snapshot_ttl_s
        self._seen: dict[str, tuple[float, Backend]] = {}
        self._turn = itertools.count()
        self._lock = threading.Lock()

    # -- state -----------------------------------------------------------------------
    def snapshot(self, urls: list[str]) -> list[Backend]:
        """Backends of ``urls`` (cached for the TTL; stale ones re-read in one round trip)."""
        now = time.monotonic()
        fresh = {u: hit[1] for u in urls if (hit := self._seen.get(u)) and hit[0] > now}
        stale = [u for u in urls if u not in fresh]
        if stale:
            for backend in self._read(stale):
                self._seen[backend.url] = (now + self.ttl, backend)
                fresh[backend.url] = backend
        return [fresh[u] for u in urls]

    def _read(self, urls: list[str]) -> list[Backend]:
        b = self.breakers
        if b.redis_usable():
            keys = [k for u in urls for k in state_keys(u, b.prefix)] + [probe_key(u) for u in urls]
            try:
                values = b.cache.client.mget(keys)
            except Exception as exc:  # redis errors: fall back to in-process breakers
                b.redis_failed(exc)
            else:
                from shared.backends.breaker import view_from

                n = len(urls)
                return [Backend(u, view_from(u, values[i * 3:i * 3 + 3]), _probe_ok(values[3 * n + i]))
                        for i, u in enumerate(urls)]
        return [Backend(u, b.local_view(u), None) for u in urls]

    def forget(self, url: str) -> None:
        self._seen.pop(url, None)

    # -- choosing --------------------------------------------------------------------
    def candidates(self, urls: list[str]) -> list[Backend]:
        """Usable backends in round-robin order; CircuitOpen when every circuit is open."""
        backends = self.snapshot(urls)
        closed = [b for b in backends if self.breakers.allows(b.circuit)]
        if not closed:
            raise self.breakers.open_error(min((b.circuit for b in backends),
                                               key=lambda v: v.remaining(self.breakers.reset_timeout)))
        usable = [b for b in closed if b.probe_ok is not False] or closed  # all probes failed: maybe stale
        start = next(self._turn) % len(usable)
        return usable[start:] + usable[:start]

    def call(self, urls: list[str], attempt: Callable[[str], T], count: bool = True) -> T:
        """``attempt(url)`` on a chosen backend; one retry elsewhere when the connection failed.

        ``count=False`` keeps a successful call out of the request metrics (cached metadata reads).
        """
        if not urls:
            raise Unavailable("the model has no Triton backend configured")
        chosen = self.candidates(urls)[:MAX_ATTEMPTS]
        for i, backend in enumerate(chosen):
            started = time.perf_counter()
            try:
                result = attempt(backend.url)
            except KinferError as err:
                if not is_backend_failure(err):
                    raise
                self._failed(backend, err, time.perf_counter() - started, trip=err.code != "model_not_loaded")
                if is_connection_failure(err) and i + 1 < len(chosen):
                    log.warning("retrying on another backend after: %s", err.message)
                    continue
                raise
            if count:
                self.recorder.record(backend.url, "success", time.perf_counter() - started)
            if backend.circuit.state != "closed" or backend.circuit.failures:
                self.breakers.record_success(backend.url, backend.circuit)
                self.forget(backend.url)
            return result
        raise AssertionError("unreachable")

    def _failed(self, backend: Backend, err: KinferError, seconds: float, trip: bool = True) -> None:
        """Count the failure; a model missing on one backend does not trip that backend's breaker."""
        self.recorder.record(backend.url, "failure", seconds)
        if trip:
            self.breakers.record_failure(backend.url, err)
            self.forget(backend.url)


def _probe_ok(raw: Any) -> bool | None:
    if not raw:
        return None
    try:
        return bool(json.loads(raw).get("healthy"))
    except (ValueError, AttributeError):
        return None

