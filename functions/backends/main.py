"""The backends function: GET /health (backends and breakers), GET /metrics (backends and model
versions), and the probe tick.

A Knative PingSource POSTs a CloudEvent (binary or structured mode) to ``/``; that
probes every Triton backend and records the results in Redis.
"""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared.backends import monitor as backends
from shared.web import schemas as s
from shared.web.events import parse_event
from shared.web.http import LIVEZ, Call, Route, Router, dispatch
from shared.web.runtime import function_services


def _probe(call: Call) -> dict:
    event = parse_event(call.headers, call.body)
    results = backends.probe(call.services)
    return {"event_id": event["id"], "probed": len(results),
            "healthy": sum(1 for r in results if r["healthy"]), "backends": results}


def _health(call: Call) -> dict:
    return backends.health(call.services)


def _metrics(call: Call) -> Response:
    from shared.lifecycle.metrics import VersionCollector

    text, content_type = backends.metrics_text(call.services, (VersionCollector(call.services.cache.client),))
    return Response(text, status_code=200, media_type=content_type)


ROUTES = Router([
    LIVEZ,
    Route("/", ("POST",), _probe, query=(), summary="Probe every Triton backend (a PingSource CloudEvent)",
          responses={200: ("what was probed", s.PROBE_RESULT)}),
    Route("/health", ("GET",), _health, query=(), summary="Backends, circuit breakers, last probes",
          responses={200: ("every backend", s.BACKENDS_HEALTH)}),
    Route("/metrics", ("GET",), _metrics, query=(), summary="Prometheus metrics",
          responses={200: ("Prometheus text exposition", {"type": "string"}, "text/plain")}),
])


@functions_framework.aio.http
async def serve_backends(request: Request) -> Response:
    return await dispatch(request, ROUTES, function_services(), "backends")
