"""The backends function: GET /health (backends and breakers), GET /metrics, and the probe tick.

A Knative PingSource POSTs a CloudEvent (binary or structured mode) to ``/``; that
probes every Triton backend and records the results in Redis.
"""

from __future__ import annotations

import functions_framework
from flask import Request, Response

from shared import backends
from shared.events import parse_event
from shared.http import LIVEZ, Call, Route, Router, dispatch
from shared.runtime import function_services


def _probe(call: Call) -> dict:
    event = parse_event(call.request)
    results = backends.probe(call.services)
    return {"event_id": event["id"], "probed": len(results),
            "healthy": sum(1 for r in results if r["healthy"]), "backends": results}


def _health(call: Call) -> dict:
    return backends.health(call.services)


def _metrics(call: Call) -> Response:
    text, content_type = backends.metrics_text(call.services)
    return Response(text, status=200, content_type=content_type)


ROUTES = Router([
    LIVEZ,
    Route("/", ("POST",), _probe),
    Route("/health", ("GET",), _health),
    Route("/metrics", ("GET",), _metrics),
])


@functions_framework.http
def serve_backends(request: Request) -> Response:
    return dispatch(request, ROUTES, function_services(), "backends")
