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

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared import registry
from shared.backends.balancer import probe_key
from shared.endpoints import backend_id, resolve
from shared.errors import KinferError

if TYPE_CHECKING:
    from shared.services import Services

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
PROBE_STALE_S = 180.0
PROBE_KEEP_S = 3600


def backend_models(services: Services) -> dict[str, list[str]]:
    """{backend url: Triton model names registered on it}, TRITON_URL always included."""
    own = services.settings.triton_url
    found: dict[str, list[str]] = {backend_id(own): []}
    try:
        rows = registry.active_backends(services)
    except KinferError as exc:
        log.warning("registry unreachable; reporting TRITON_URL only: %s", exc.message)
        rows = []
    for urls, triton_model in rows:
        for url in urls or [own]:
            names = found.setdefault(resolve(url, own), [])
            if triton_model not in names:
                names.append(triton_model)
    return found


def probe_one(services: Services, url: str, model_names: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    # A backend is healthy when its server is ready: one model registered there but
    # missing must not steer traffic for the others away from it.
    ok, missing, reason = services.triton.ready(url, model_names, PROBE_TIMEOUT_S)
    return {
        "url": url,
        "healthy": ok,
        "reason": reason,
        "models": model_names,
        "models_not_ready": missing,
        "last_checked": datetime.now(UTC).isoformat(),
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def _probed(services: Services, targets: dict[str, list[str]]) -> dict[str, list[str]]:
    """``targets`` less TRITON_URL when it must not be probed (PROBE_TRITON_URL=false)."""
    if services.settings.probe_triton_url:
        return targets
    cold = backend_id(services.settings.triton_url)
    return {url: names for url, names in targets.items() if url != cold}


def probe(services: Services, targets: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Probe backends in parallel and record each result in Redis (best effort)."""
    targets = _probed(services, backend_models(services) if targets is None else targets)
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(targets)))) as pool:
        results = list(pool.map(lambda item: probe_one(services, *item), targets.items()))
    _store(services, results)
    return results


def _store(services: Services, results: list[dict[str, Any]]) -> None:
    if not services.cache.available():
        return
    try:
        pipe = services.cache.client.pipeline(transaction=False)
        for r in results:
            pipe.set(probe_key(r["url"]), json.dumps(r), ex=PROBE_KEEP_S)
        pipe.execute()
    except Exception as exc:  # redis errors: the probe still answers
        log.warning("could not record probe results: %s", type(exc).__name__)


def probe_records(services: Services, urls: list[str]) -> dict[str, dict[str, Any]]:
    """Last recorded probe per URL (missing when never probed or Redis is down)."""
    if not urls or not services.cache.available():
        return {}
    try:
        values = services.cache.client.mget([probe_key(u) for u in urls])
    except Exception as exc:  # redis errors
        log.warning("could not read probe results: %s", type(exc).__name__)
        return {}
    return {u: json.loads(raw) for u, raw in zip(urls, values, strict=True) if raw}


def _stale(record: dict[str, Any] | None) -> bool:
    if record is None:
        return True
    checked = datetime.fromisoformat(record["last_checked"])
    return (datetime.now(UTC) - checked).total_seconds() > PROBE_STALE_S


def health(services: Services) -> dict[str, Any]:
    """{"status": healthy|degraded|unhealthy, "backends": [...]} over every backend."""
    targets = backend_models(services)
    urls = list(targets)
    records = probe_records(services, urls)
    stale = {u: targets[u] for u in urls if _stale(records.get(u))}
    if stale:
        records.update({r["url"]: r for r in probe(services, stale)})
    views = services.breakers.views(urls)
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
    backends = [
        {
            "url": u,
            "healthy": bool(records[u]["healthy"]),
            "circuit": views[u].state,
            "failures": views[u].failures,
            "last_checked": records[u]["last_checked"],
            "latency_ms": records[u]["latency_ms"],
            "reason": records[u].get("reason"),
            "models_not_ready": records[u].get("models_not_ready", []),
        }
        for u in urls
    ]
    up = sum(1 for b in backends if b["healthy"] and b["circuit"] != "open")
    complete = up == len(backends) and not any(b["models_not_ready"] for b in backends)
    status = "healthy" if complete else ("degraded" if up else "unhealthy")
    return {"status": status, "service": services.settings.service_name, "backends": backends}


def metrics_text(services: Services, collectors: tuple[Any, ...] = ()) -> tuple[bytes, str]:
    """(Prometheus exposition, content type): breaker states, probe results, request counters,
    and whatever ``collectors`` (prometheus-client custom collectors) add."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from shared.backends.metrics import BackendCollector

    urls = list(backend_models(services))
    extra = _counted_urls(services)
    urls += [u for u in extra if u not in urls]
    registry = CollectorRegistry(auto_describe=False)
    collector = BackendCollector(
        services.cache.client, urls, services.breakers.views(urls), probe_records(services, urls)
    )
    registry.register(collector)
    for more in collectors:
        registry.register(more)
    try:
        return generate_latest(registry), CONTENT_TYPE_LATEST
    except Exception as exc:  # redis errors while reading counters: gauges only is not honest; fail clearly
        from shared.errors import Unavailable

        raise Unavailable("metrics are unavailable: Redis cannot be read", retry_after=5) from exc


def _counted_urls(services: Services) -> list[str]:
    """Backends that have request counters (e.g. a model since deleted)."""
    from shared.backends.metrics import REQUESTS_KEY

    try:
        fields = services.cache.client.hkeys(REQUESTS_KEY) if services.cache.available() else []
    except Exception:  # redis errors: the scrape below reports it
        return []
    return sorted({(f.decode() if isinstance(f, bytes) else f).rpartition("|")[0] for f in fields})
