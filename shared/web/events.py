"""CloudEvents in: the event of a request (binary or structured mode) and the status a failure answers.
``shared.web.dispatch`` runs event routes (``Route(event=True)``) through the same pipeline as every
HTTP request.

The status code steers redelivery (``docs/architecture.md``): a retryable failure answers 503 (or
429/504), a permanent one 400 (malformed event) or 422; never 404 or 409, which
Knative would retry. A sender that is not authenticated (EVENT_AUTH=oidc, ``shared.access.eventauth``)
gets 401 (403 when forbidden): not redelivered either, and never a 5xx that would make the dispatcher retry
a bad token for the event's whole retry budget.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http

from shared.errors import InvalidInput, KinferError

_BATCH_TYPE = "application/cloudevents-batch+json"


def event_error_status(exc: KinferError) -> int:
    """Retryable errors keep their 503/504/429 (a 500/502 becomes 503); permanent ones are 400, 401, 403
    or 422."""
    if exc.retryable or exc.status >= 500:
        return 503 if exc.status in (500, 502) else exc.status
    return exc.status if exc.status in (400, 401, 403) else 422


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
