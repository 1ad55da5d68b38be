"""What the infer function tells load balancers and Knative about itself (GET /health, /v2/health/ready).

Inference needs, per request, a known key (cached in-process; PostgreSQL only on a
miss), a resolved model (in-process, then Redis, then PostgreSQL) and Triton. So:

- ``healthy``: PostgreSQL and Redis answer.
- ``degraded`` (200, still ready): one of them is down. Known keys and warm models keep
  being served (PostgreSQL down), or the registry is read from PostgreSQL and rate limits
  are enforced per process (Redis down). The body says which.
- ``unhealthy`` (503): both are down; only requests for keys and models this process has
  cached very recently could still succeed.

Each check waits at most ``CHECK_TIMEOUT_S`` (a stalled PostgreSQL must not fail the
probe that keeps this pod serving known keys). Triton is not probed (it may scale to
zero); its circuit breaker's state is reported instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, NotRequired, TypedDict

from shared.endpoints import resolve as resolve_backend
from shared.errors import Unavailable

if TYPE_CHECKING:
    from shared.backends.balancer import Balancer
    from shared.clients.aio import SingleFlight
    from shared.clients.cache import Cache
    from shared.clients.db import Database
    from shared.inference.resolve import Resolver
    from shared.settings import Settings

CHECK_TIMEOUT_S = 0.5

Check = Literal["ok", "unreachable"]
Status = Literal["healthy", "degraded", "unhealthy"]


class HealthChecks(TypedDict):
    database: Check
    cache: Check
    triton_circuit: str


class HealthBody(TypedDict):
    """GET /health: the infer function's state, its checks, and what a failing one means for callers."""

    status: Status
    service: str
    checks: HealthChecks
    effects: NotRequired[list[str]]


class ReadyBody(TypedDict):
    """GET /v2/health/ready when ready."""

    ready: bool
    status: Status


class InferenceHealth:
    """Owns the infer function's health and readiness answers (PostgreSQL, Redis, TRITON_URL's circuit)."""

    def __init__(
        self,
        db: Database,
        cache: Cache,
        balancer: Balancer,
        resolver: Resolver,
        single_flight: SingleFlight,
        settings: Settings,
    ) -> None:
        self.db = db
        self.cache = cache
        self.balancer = balancer
        self.resolver = resolver
        self.single_flight = single_flight
        self.settings = settings

    async def _check(self, name: str, ping: Callable[[], bool]) -> bool:
        """``ping()`` in a thread, one at a time per check, answered within CHECK_TIMEOUT_S."""

        async def run() -> bool:
            return await asyncio.to_thread(ping)

        try:
            return await asyncio.wait_for(
                asyncio.shield(self.single_flight.run(("health", name), run)), CHECK_TIMEOUT_S
            )
        except TimeoutError:
            return False

    async def health(self) -> tuple[int, HealthBody]:
        db_ok, cache_ok = await asyncio.gather(
            self._check("database", self.db.ping), self._check("cache", self.cache.ping)
        )
        own = self.settings.triton_url
        triton = resolve_backend(own, own)  # the backend of a model that names none (``Resolver.backend_urls``)
        circuit = (await self.balancer.snapshot_async([triton]))[0].circuit.state
        checks: HealthChecks = {
            "database": "ok" if db_ok else "unreachable",
            "cache": "ok" if cache_ok else "unreachable",
            "triton_circuit": circuit,
        }
        status: Status = "healthy" if db_ok and cache_ok else ("degraded" if db_ok or cache_ok else "unhealthy")
        body: HealthBody = {"status": status, "service": self.settings.service_name, "checks": checks}
        effects = []
        if not db_ok:
            effects.append(
                "PostgreSQL is unreachable: keys seen recently and warm models are still served; "
                "new keys are answered 503"
            )
        if not cache_ok:
            effects.append(
                "Redis is unreachable: the registry is read from PostgreSQL, rate limits and circuit "
                "breakers are per process"
            )
        if circuit == "open":
            effects.append("the circuit breaker of TRITON_URL is open: its models answer 503 until it recovers")
        if effects:
            body["effects"] = effects
        return (503 if status == "unhealthy" else 200), body

    async def server_ready(self) -> tuple[int, ReadyBody]:
        """GET /v2/health/ready: 200 unless the function is unhealthy (503 with the JSON error body)."""
        status, body = await self.health()
        if status != 200:
            raise Unavailable("not ready: PostgreSQL and Redis are both unreachable", retry_after=5)
        return 200, {"ready": True, "status": body["status"]}
