"""What every ``Router`` adds for observability: ``GET /metrics``, the process's Prometheus counters
(``shared.telemetry.Metrics``; no key is asked, as for Prometheus scraping; the exposition carries key
ids, never secrets); and ``GET /debug/traces`` (admin scope, even with AUTH_REQUIRED off), the spans this
process recorded lately (``TRACE_BUFFER_SPANS``), newest first, optionally of one ``trace_id``."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from starlette.responses import Response

from shared import telemetry
from shared import validation as v
from shared.errors import InvalidInput, NotFound
from shared.web.route import METRICS_PATH, QueryParam, Route

if TYPE_CHECKING:
    from shared.web.request import Call


def _text() -> Response:
    text, content_type = telemetry.metrics().text()
    return Response(text, status_code=200, media_type=content_type)


async def _serve_metrics(call: Call) -> Response:
    return _text()


METRICS_ROUTE = Route(
    METRICS_PATH,
    ("GET",),
    _serve_metrics,
    query=(),
    summary="Prometheus metrics of this process",
    responses={200: ("Prometheus text exposition", {"type": "string"}, "text/plain")},
)


TRACES_PATH = "/debug/traces"
TRACE_ID_CHARS = frozenset("0123456789abcdef")


class TracesPage(TypedDict):
    spans: list[telemetry.SpanRecord]
    count: int


async def _serve_traces(call: Call) -> TracesPage:
    trace_id = call.query("trace_id")
    if trace_id is not None and (len(trace_id) != 32 or not set(trace_id) <= TRACE_ID_CHARS):
        raise InvalidInput("trace_id must be 32 lowercase hex digits (the X-Trace-ID of an answer)", field="trace_id")
    limit = v.integer(call.query("limit"), "limit", default=100, lo=1, hi=1000)
    spans = telemetry.recent_spans(trace_id, limit)
    if spans is None:
        raise NotFound(
            "this process keeps no spans (TRACE_BUFFER_SPANS is 0); set it, or send spans to a collector with "
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            code="traces_off",
        )
    return {"spans": spans, "count": len(spans)}


TRACES_ROUTE = Route(
    TRACES_PATH,
    ("GET",),
    _serve_traces,
    scope="admin",
    always_auth=True,
    query=(
        QueryParam("trace_id", {"type": "string", "pattern": "^[0-9a-f]{32}$"}, "only the spans of this trace"),
        QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "at most this many"),
    ),
    summary="Spans this process recorded lately, newest first (TRACE_BUFFER_SPANS)",
    responses={200: ("recent spans", {"type": "object"})},
)
