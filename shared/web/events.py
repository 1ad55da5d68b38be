"""CloudEvents in: parse an event from a request, then the shared shell of the event functions
(parse, trace, run, answer).

The status code steers redelivery (``docs/architecture.md``): a retryable failure answers 503 (or
429/504), a permanent one 400 (malformed event) or 422; never 404 or 409, which
Knative would retry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shared import telemetry
from shared.errors import InvalidInput, KinferError
from shared.logs import request_id_var
from shared.web.request import read_body, request_id_of
from shared.web.responses import error_response, json_response

if TYPE_CHECKING:
    from shared.services import Services

log = logging.getLogger(__name__)

_BATCH_TYPE = "application/cloudevents-batch+json"


async def serve_event(
    request: Request, services: Services, span_name: str, handler: Callable[[Any, Any], tuple[int, dict[str, Any]]]
) -> Response:
    """Run ``handler(services, event)`` (in the thread pool) for a POSTed CloudEvent; GET /health and /livez
    answer 200."""
    if request.method == "GET" and request.url.path.rstrip("/") == "/livez":
        return json_response({"status": "alive"})
    if request.method == "GET" and request.url.path.rstrip("/") == "/health":
        return json_response({"status": "healthy", "service": services.settings.service_name})
    request_id = request_id_of(request.headers)
    token = request_id_var.set(request_id)
    try:
        return await _run(request, services, span_name, handler, request_id)
    finally:
        request_id_var.reset(token)


async def _run(
    request: Request, services: Services, span_name: str, handler: Callable[..., Any], request_id: str
) -> Response:
    carrier = {"traceparent": request.headers.get("ce-traceparent") or request.headers.get("traceparent") or ""}
    with telemetry.server_span(span_name, carrier) as span:
        trace_id = telemetry.trace_id_of(span)
        try:
            event = parse_event(request.headers, await read_body(request, services.settings.max_body_bytes))
            span.set_attribute("cloudevents.event_id", str(event["id"]))
            span.set_attribute("cloudevents.event_type", str(event["type"]))
            status, body = await run_in_threadpool(handler, services, event)
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


def parse_event(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """The CloudEvent of a request's headers and body (binary or structured mode); InvalidInput when malformed."""
    content_type = headers.get("content-type", "")
    if content_type.startswith(_BATCH_TYPE):
        raise InvalidInput("batched CloudEvents are not supported; send one event per request")
    try:
        event = from_http(dict(headers), body)
    except GenericException as exc:
        raise InvalidInput(f"malformed CloudEvent: {_reason(exc)}") from None
    _require_json_data(event)
    return event


def _reason(exc: GenericException) -> str:
    """A short reason that never echoes the request body."""
    text = str(exc)
    if text.startswith("Failed to read specversion from both headers and data"):
        return "no ce-specversion header and the body is not a structured-mode JSON event"
    if text.startswith("Failed to find specversion"):
        return "binary mode needs ce-specversion, ce-id, ce-source and ce-type headers"
    return text.split(":", 1)[0][:200] if "following" in text else text[:200]


def _require_json_data(event: CloudEvent) -> None:
    """Reject a JSON-typed event whose data did not parse (the SDK leaves it as raw bytes)."""
    content_type = (event.get("datacontenttype") or "").lower()
    data = event.data
    if ("json" in content_type or not content_type) and isinstance(data, bytes) and data:
        try:
            event.data = json.loads(data)
        except ValueError:
            raise InvalidInput("malformed CloudEvent: data is not valid JSON") from None
