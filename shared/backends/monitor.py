"""The backends function's logic: probe every Triton backend, report health, expose metrics.

Backends are every URL of every registered model plus TRITON_URL. A probe asks each
over gRPC ``is_server_ready`` and ``is_model_ready`` for the models registered on it
and stores ``{"healthy", "last_checked", "latency_ms", "reason"}`` in Redis under
``kinfer:probe:<url>``, where the balancer reads it. GET /health reports those
records with each breaker's state (probing live any backend never probed or probed
longer than ``PROBE_STALE_S`` ago); GET /metrics renders Prometheus text from
Redis at scrape time (see shared/backends_metrics.py).

With PROBE_TRITON_URL=false (TRITON_URL scales to zero) TRITON_URL is never probed,
neither on the tick nor on GET /health: a probe would wake it. It is reported with
its circuit breaker's view of real requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NotRequired, TypedDict, cast

from shared.backends.balancer import probe_key
from shared.endpoints import backend_id, resolve
from shared.errors import KinferError

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from shared.backends.breaker import Breakers
    from shared.backends.triton_async import AsyncTriton
    from shared.clients.aio import LoopThread
    from shared.clients.cache import Cache
    from shared.registry import ModelRegistry
    from shared.settings import Settings

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
PROBE_STALE_S = 180.0
PROBE_KEEP_S = 3600


class ActivatorState(TypedDict, total=False):
    """What a backend behind an activator (the local stack's scale to zero) adds to its record: its state
    (serving, waking, idle-stopped or stopping), since when, and how long its last wake took."""

    state: str
    state_since: str
    wake_estimate_s: float | None


class ProbeResult(ActivatorState):
    """One probe of a backend, as answered by the tick and stored in Redis under ``kinfer:probe:<url>``."""

    url: str
    healthy: bool
    reason: str
    models: list[str]
    models_not_ready: list[str]
    last_checked: str
    latency_ms: float


class NotProbed(ActivatorState):
    """The stand-in record of a backend never probed (PROBE_TRITON_URL=false): its breaker decides."""

    healthy: bool
    last_checked: None
    latency_ms: None
    reason: str
    models_not_ready: NotRequired[list[str]]


class BackendHealth(TypedDict):
    """One backend in ``GET /health``."""

    url: str
    healthy: bool
    circuit: str
    failures: int
    last_checked: str | None
    latency_ms: float | None
    reason: str | None
    models_not_ready: list[str]
    state: str | None  # behind an activator: serving, waking, idle-stopped or stopping; else None
    state_since: str | None
    wake_estimate_s: float | None  # how long its last wake took: the estimate while it wakes


class HealthReport(TypedDict):
    """``GET /health`` of the backends function."""

    status: str
    service: str
    backends: list[BackendHealth]


def _stale(record: ProbeResult | None) -> bool:
    if record is None:
        return True
    checked = datetime.fromisoformat(record["last_checked"])
    return (datetime.now(UTC) - checked).total_seconds() > PROBE_STALE_S


class BackendMonitor:
    """Probes the Triton backends, records the results in Redis, and renders /health and /metrics."""

    def __init__(
        self,
        registry: ModelRegistry,
        triton_async: AsyncTriton,
        loop: LoopThread,
        breakers: Breakers,
        cache: Cache,
        settings: Settings,
    ) -> None:
        self.registry = registry
        self.triton_async = triton_async
        self.loop = loop
        self.breakers = breakers
        self.cache = cache
        self.settings = settings

    def backend_models(self) -> dict[str, list[str]]:
        """{backend url: Triton model names registered on it}, TRITON_URL always included."""
        own = self.settings.triton_url
        found: dict[str, list[str]] = {backend_id(own): []}
        try:
            rows = self.registry.active_backends()
        except KinferError as exc:
            log.warning("registry unreachable; reporting TRITON_URL only: %s", exc.message)
            rows = []
        for urls, triton_model in rows:
            for url in urls or [own]:
                names = found.setdefault(resolve(url, own), [])
                if triton_model not in names:
                    names.append(triton_model)
        return found

    async def probe_one(self, url: str, model_names: list[str]) -> ProbeResult:
        started = time.perf_counter()
        # A backend is healthy when its server is ready: one model registered there but
        # missing must not steer traffic for the others away from it.
        ok, missing, reason = await self.triton_async.ready(url, model_names, PROBE_TIMEOUT_S)
        return {
            "url": url,
            "healthy": ok,
            "reason": reason,
            "models": model_names,
            "models_not_ready": missing,
            "last_checked": datetime.now(UTC).isoformat(),
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        }

    def _probed(self, targets: dict[str, list[str]]) -> dict[str, list[str]]:
        """``targets`` less the backends that scale to zero (a probe would wake them, and count as traffic that
        keeps them up): TRITON_URL when PROBE_TRITON_URL=false, and every PROBE_SKIP_BACKENDS entry."""
        cold = {backend_id(url) for url in self.settings.probe_skip_backends}
        if not self.settings.probe_triton_url:
            cold.add(backend_id(self.settings.triton_url))
        if not cold:
            return targets
        return {url: names for url, names in targets.items() if backend_id(url) not in cold}

    def probe(self, targets: dict[str, list[str]] | None = None) -> list[ProbeResult]:
        """Probe backends concurrently and record each result in Redis (best effort)."""
        targets = self._probed(self.backend_models() if targets is None else targets)
        if not targets:
            return []

        async def every() -> list[ProbeResult]:
            return list(await asyncio.gather(*(self.probe_one(url, names) for url, names in targets.items())))

        results = self.loop.run(every())
        self._store(results)
        return results

    def _store(self, results: list[ProbeResult]) -> None:
        if not self.cache.available():
            return
        try:
            pipe = self.cache.client.pipeline(transaction=False)
            for r in results:
                pipe.set(probe_key(r["url"]), json.dumps(r), ex=PROBE_KEEP_S)
            pipe.execute()
        except Exception as exc:  # redis errors: the probe still answers
            log.warning("could not record probe results: %s", type(exc).__name__)

    def probe_records(self, urls: list[str]) -> dict[str, ProbeResult]:
        """Last recorded probe per URL (missing when never probed or Redis is down)."""
        if not urls or not self.cache.available():
            return {}
        try:
            values = self.cache.client.mget([probe_key(u) for u in urls])
        except Exception as exc:  # redis errors
            log.warning("could not read probe results: %s", type(exc).__name__)
            return {}
        return {u: cast(ProbeResult, json.loads(raw)) for u, raw in zip(urls, values, strict=True) if raw}

    def health(self) -> HealthReport:
        """{"status": healthy|degraded|unhealthy, "backends": [...]} over every backend."""
        targets = self.backend_models()
        urls = list(targets)
        probed = self.probe_records(urls)
        records: dict[str, ProbeResult | NotProbed] = dict(probed)
        stale = {u: targets[u] for u in urls if _stale(probed.get(u))}
        if stale:
            records.update({r["url"]: r for r in self.probe(stale)})
        views = self.breakers.views(urls)
        for u in urls:  # never probed (PROBE_TRITON_URL=false): healthy unless its circuit is open
            records.setdefault(
                u,
                {
                    "healthy": views[u].state != "open",
                    "last_checked": None,
                    "latency_ms": None,
                    "reason": "not probed: it scales to zero; health is its circuit breaker's",
                },
            )
        backends: list[BackendHealth] = [
            {
                "url": u,
                "healthy": bool(records[u]["healthy"]),
                "circuit": views[u].state,
                "failures": views[u].failures,
                "last_checked": records[u]["last_checked"],
                "latency_ms": records[u]["latency_ms"],
                "reason": records[u].get("reason"),
                "models_not_ready": records[u].get("models_not_ready", []),
                "state": records[u].get("state"),
                "state_since": records[u].get("state_since"),
                "wake_estimate_s": records[u].get("wake_estimate_s"),
            }
            for u in urls
        ]
        up = sum(1 for b in backends if b["healthy"] and b["circuit"] != "open")
        complete = up == len(backends) and not any(b["models_not_ready"] for b in backends)
        status = "healthy" if complete else ("degraded" if up else "unhealthy")
        return {"status": status, "service": self.settings.service_name, "backends": backends}

    def metrics_text(self, collectors: tuple[Collector, ...] = ()) -> tuple[bytes, str]:
        """(Prometheus exposition, content type): breaker states, probe results, request counters,
        and whatever ``collectors`` (prometheus-client custom collectors) add."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        from shared.backends.metrics import BackendCollector

        urls = list(self.backend_models())
        extra = self._counted_urls()
        urls += [u for u in extra if u not in urls]
        registry = CollectorRegistry(auto_describe=False)
        collector = BackendCollector(self.cache.client, urls, self.breakers.views(urls), self.probe_records(urls))
        registry.register(collector)
        for more in collectors:
            registry.register(more)
        try:
            return generate_latest(registry), CONTENT_TYPE_LATEST
        except Exception as exc:  # redis errors while reading counters: gauges only is not honest; fail clearly
            from shared.errors import Unavailable

            raise Unavailable("metrics are unavailable: Redis cannot be read", retry_after=5) from exc

    def _counted_urls(self) -> list[str]:
        """Backends that have request counters (e.g. a model since deleted)."""
        from shared.backends.metrics import REQUESTS_KEY

        try:
            fields = self.cache.client.hkeys(REQUESTS_KEY) if self.cache.available() else []
        except Exception:  # redis errors: the scrape below reports it
            return []
        return sorted({(f.decode() if isinstance(f, bytes) else f).rpartition("|")[0] for f in fields})
