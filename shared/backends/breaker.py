"""One pybreaker circuit breaker per Triton backend URL, its state shared through Redis.

State lives in pybreaker's ``CircuitRedisStorage`` (namespace ``kinfer:cb:<url>``) on
the shared bytes redis client, so every instance of every function sees the same
circuit. pybreaker's ``call`` holds a lock for the whole guarded call, which would
serialise a process's Triton traffic; so the Triton call runs outside it and only
its outcome is fed to the breaker (``record_success`` / ``record_failure``), which
then makes pybreaker's own transitions. A success on a closed circuit with no
failures writes nothing. When Redis is unreachable each backend falls back to an
in-process ``CircuitMemoryStorage`` breaker. pybreaker's Redis storage is synchronous:
the async hot path reads breaker views from the balancer's local copy and records
outcomes off the event loop (``shared.backends.balancer``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, TypedDict

import pybreaker

from shared.errors import CircuitOpen, KinferError

log = logging.getLogger(__name__)

PREFIX = "kinfer:cb"
STATE_CODES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}
REDIS_RETRY_S = 2.0  # after Redis failed, use in-process breakers this long before trying it again
# Error codes that say a backend is busy, not broken (a generation queued past its first-token timeout while the
# backend answered others: ``shared.backends.triton_stream.Overloaded``): never counted, so one caller's load
# cannot open the circuit every tenant's requests to that backend share.
NOT_FAILURES = frozenset({"overloaded"})


class CircuitJSON(TypedDict):
    """A breaker view as JSON."""

    url: str
    circuit: str
    failures: int
    opened_at: float | None


@dataclass(frozen=True)
class CircuitView:
    """A read of one breaker: state, consecutive failures, when it opened (epoch s), where it lives."""

    url: str
    state: str = pybreaker.STATE_CLOSED
    failures: int = 0
    opened_at: float | None = None
    shared: bool = True

    def remaining(self, reset_timeout: float, now: float | None = None) -> float:
        """Seconds until an open circuit lets a trial call through (0 when it would now)."""
        if self.state != pybreaker.STATE_OPEN:
            return 0.0
        now = time.time() if now is None else now
        return max(0.0, (self.opened_at or 0.0) + reset_timeout - now)

    def as_json(self) -> CircuitJSON:
        return {"url": self.url, "circuit": self.state, "failures": self.failures, "opened_at": self.opened_at}


def state_keys(url: str, prefix: str = PREFIX) -> list[str]:
    """The Redis keys pybreaker keeps for ``url``: state, fail_counter, opened_at."""
    return [f"{prefix}:{url}:pybreaker:{k}" for k in ("state", "fail_counter", "opened_at")]


def view_from(url: str, values: list[Any]) -> CircuitView:
    """Parse the three values of ``state_keys`` (bytes or None) into a view."""
    state, failures, opened = (v.decode() if isinstance(v, bytes) else v for v in values)
    return CircuitView(
        url, state or pybreaker.STATE_CLOSED, int(failures or 0), float(opened) if opened else None, shared=True
    )


def read_states(client: Any, urls: list[str], prefix: str = PREFIX) -> dict[str, CircuitView]:
    """Breaker views of ``urls`` in one MGET (any process can call this; Redis errors propagate)."""
    keys = [k for url in urls for k in state_keys(url, prefix)]
    values = client.mget(keys) if keys else []
    return {url: view_from(url, values[i * 3 : i * 3 + 3]) for i, url in enumerate(urls)}


class _LogTransitions(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        log.warning(
            "circuit breaker for Triton backend %s: %s -> %s", cb.name, getattr(old_state, "name", None), new_state.name
        )


class Breakers:
    """The process's breakers, Redis-backed while Redis answers, in-process otherwise."""

    def __init__(self, settings: Any, cache: Any, prefix: str = PREFIX) -> None:
        self.fail_max = settings.breaker_fail_max
        self.reset_timeout = settings.breaker_reset_timeout_s
        self.cache = cache
        self.prefix = prefix
        self._shared: dict[str, pybreaker.CircuitBreaker] = {}
        self._local: dict[str, pybreaker.CircuitBreaker] = {}
        self._lock = threading.Lock()
        self._redis_down_until = 0.0

    # -- which breaker -------------------------------------------------------------
    def redis_usable(self) -> bool:
        return time.monotonic() >= self._redis_down_until and self.cache.available()

    def redis_failed(self, exc: BaseException) -> None:
        if self.redis_usable():
            log.warning("redis unusable for circuit breakers (%s); using in-process breakers", type(exc).__name__)
        self._redis_down_until = time.monotonic() + REDIS_RETRY_S

    def breaker(self, url: str) -> pybreaker.CircuitBreaker:
        """The shared breaker of ``url`` when Redis is usable, else its in-process one."""
        if self.redis_usable():
            found = self._shared.get(url) or self._make_shared(url)
            if found is not None:
                return found
        with self._lock:
            return self._local.setdefault(url, self._new(url, None))

    def _make_shared(self, url: str) -> pybreaker.CircuitBreaker | None:
        """CircuitRedisStorage's constructor writes to Redis: bounded by the client's short timeouts."""
        try:
            storage = pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, self.cache.client, namespace=f"{self.prefix}:{url}"
            )
        except Exception as exc:  # redis-py connection/timeout errors (RedisError, OSError)
            self.redis_failed(exc)
            return None
        with self._lock:
            return self._shared.setdefault(url, self._new(url, storage))

    def _new(self, url: str, storage: Any) -> pybreaker.CircuitBreaker:
        return pybreaker.CircuitBreaker(
            fail_max=self.fail_max,
            reset_timeout=self.reset_timeout,
            state_storage=storage,
            name=url,
            listeners=[_LogTransitions()],
        )

    # -- reading ---------------------------------------------------------------------
    def local_view(self, url: str) -> CircuitView:
        """View of the in-process breaker (used while Redis is down)."""
        with self._lock:
            cb = self._local.setdefault(url, self._new(url, None))
        storage = cb._state_storage
        opened = storage.opened_at.timestamp() if storage.opened_at else None
        return CircuitView(url, storage.state, storage.counter, opened, shared=False)

    def views(self, urls: list[str]) -> dict[str, CircuitView]:
        """Current views of ``urls``: one Redis MGET, or the in-process breakers when Redis is down."""
        if self.redis_usable():
            try:
                return read_states(self.cache.client, urls, self.prefix)
            except Exception as exc:  # redis errors: degrade to in-process state
                self.redis_failed(exc)
        return {url: self.local_view(url) for url in urls}

    def allows(self, view: CircuitView) -> bool:
        return view.remaining(self.reset_timeout) <= 0

    def open_error(self, view: CircuitView, label: str | None = None) -> CircuitOpen:
        """503 naming the circuit breaker and the backend by ``label`` (its registry identity; never
        its address, which stays in the operators' views)."""
        wait = max(1.0, view.remaining(self.reset_timeout))
        return CircuitOpen(
            f"circuit breaker open for the Triton backend of {label or 'this model'} after "
            f"{view.failures or self.fail_max} failures; retry in {wait:.0f}s",
            retry_after=wait,
        )

    # -- recording -------------------------------------------------------------------
    def record_success(self, url: str, seen: CircuitView) -> None:
        """Close a half-open (or elapsed open) circuit and reset failures; free when already clean."""
        if seen.state == pybreaker.STATE_CLOSED and seen.failures == 0:
            return
        self._drive(url, None)

    def record_failure(self, url: str, err: KinferError) -> None:
        """Count a backend failure; pybreaker opens the circuit at fail_max (or on a failed trial). An
        overloaded backend (``NOT_FAILURES``) is not failing: nothing is counted."""
        if err.code in NOT_FAILURES:
            return
        self._drive(url, err)

    def trip(self, url: str) -> None:
        """Open the circuit of ``url`` now (a backend that timed out and then did not answer readiness is
        hung: waiting for BREAKER_FAIL_MAX timeouts would hold every caller meanwhile for TRITON_TIMEOUT_S)."""
        try:
            self.breaker(url).open()
        except Exception as exc:  # redis errors: open the in-process breaker instead
            self.redis_failed(exc)
            self.breaker(url).open()

    def reset(self, url: str) -> None:
        """Close the circuit of ``url`` now (its backend answered a readiness probe)."""
        try:
            self.breaker(url).close()
        except Exception as exc:  # redis errors: the in-process breaker is used meanwhile
            self.redis_failed(exc)

    def _drive(self, url: str, err: KinferError | None) -> None:
        def outcome() -> None:
            if err is not None:
                raise err

        try:
            self.breaker(url).call(outcome)
        except (pybreaker.CircuitBreakerError, KinferError):
            pass
