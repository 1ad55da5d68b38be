"""OpenTelemetry: one TracerProvider per process, W3C context in and out.

Spans are exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set;
otherwise they are still created (so trace ids flow through headers and logs)
but not exported.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind

from shared.settings import Settings

_lock = threading.Lock()
_provider: TracerProvider | None = None


def setup_tracing(settings: Settings) -> TracerProvider:
    """Install the process TracerProvider (idempotent)."""
    global _provider
    with _lock:
        if _provider is not None:
            return _provider
        provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
        if settings.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _provider = provider
        return provider


_tracer: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    """The process tracer, looked up once (get_tracer per span costs tens of microseconds)."""
    global _tracer
    if _tracer is None or _provider is None:
        _tracer = trace.get_tracer("kinfer")
    return _tracer


@contextmanager
def server_span(name: str, carrier: Mapping[str, Any] | Any, **attributes: Any) -> Iterator[Span]:
    """A SERVER span continuing the W3C context found in ``carrier`` (headers itself, not a dict copy)."""
    parent = propagate.extract(carrier)
    token = otel_context.attach(parent)
    try:
        with tracer().start_as_current_span(name, kind=SpanKind.SERVER, attributes=attributes or None) as span:
            yield span
    finally:
        otel_context.detach(token)


def child_span(name: str, **attributes: Any) -> Any:
    """A child span of the current one (a context manager)."""
    return tracer().start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes or None)


def trace_id_of(span: Span) -> str:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def outgoing_headers() -> dict[str, str]:
    """The W3C headers (``traceparent``, ``tracestate``) of the current context."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
