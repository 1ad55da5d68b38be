"""The shared shell of the batch CloudEvent functions: parse, trace, run, answer.

The status code steers redelivery (STYLE.md): a retryable failure answers 503 (or
429/504), a permanent one 400 (malformed event) or 422; never 404 or 409, which
Knative would retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Request, Response

from shared import telemetry
from shared.errors import KinferError
from shared.events import parse_event
from shared.http import error_response, json_response, request_id_of
from shared.logs import request_id_var

log = logging.getLogger(__name__)


def serve_event(request: Request, services: Any, span_name: str,
                handler: Callable[[Any, Any], tuple[int, dict[str, Any]]]) -> Response:
    """Run ``handler(services, event)`` for a POSTed CloudEvent; GET /health and /livez answer 200."""
    if request.method == "GET" and request.path.rstrip("/") == "/livez":
        return json_response({"status": "alive"})
    if request.method == "GET" and request.path.rstrip("/") == "/health":
        return json_response({"status": "healthy", "service": services.settings.service_name})
    request_id = request_id_of(request)
    token = request_id_var.set(request_id)
    try:
        return _run(request, services, span_name, handler, request_id)
    finally:
        request_id_var.reset(token)


def _run(request: Request, services: Any, span_name: str, handler: Callable[..., Any], request_id: str) -> Response:
    carrier = {"traceparent": request.headers.get("ce-traceparent") or request.headers.get("traceparent") or ""}
    with telemetry.server_span(span_name, carrier) as span:
        trace_id = telemetry.trace_id_of(span)
        try:
            event = parse_event(request)
            span.set_attribute("cloudevents.event_id", str(event["id"]))
            span.set_attribute("cloudevents.event_type", str(event["type"]))
            status, body = handler(services, event)
            return json_response(body, status)
        except KinferError as exc:
            status = event_error_status(exc)
            log.warning("%s: event failed with %s (%s): %s", span_name, status, exc.code, exc.message)
            response = error_response(exc, request_id, trace_id)
            response.status_code = status
            return response
        except Exception:
            log.exception("%s: unhandled error; answering 503 so the event is retried", span_name)
            generic = KinferError("internal error; the event will be retried")
            response = error_response(generic, request_id, trace_id)
            response.status_code = 503
            return response


def event_error_status(exc: KinferError) -> int:
    """Retryable errors keep their 503/504/429 (a 500/502 becomes 503); permanent ones are 400 or 422."""
    if exc.retryable or exc.status >= 500:
        return 503 if exc.status in (500, 502) else exc.status
    return 400 if exc.status == 400 else 422
