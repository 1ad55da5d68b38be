"""OpenTelemetry: one TracerProvider per process, W3C context in and out.

Sampling is parent-based: a caller's ``traceparent`` decides (sampled stays sampled,
unsampled stays unsampled), and a new trace is recorded with probability
``TRACE_SAMPLE_RATIO``. ``server_span`` makes that decision itself, before the SDK is
involved: a recorded request gets an SDK span, an unrecorded one only a
``NonRecordingSpan`` carrying its trace id (``X-Trace-ID``, logs, the ``traceparent``
passed on with the sampled flag off), which costs a few microseconds. Child spans of an
unrecorded request are skipped and the outgoing header is formatted from the span
context directly. Recorded spans are exported over OTLP/HTTP when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags

from shared.settings import Settings

_lock = threading.Lock()
_provider: TracerProvider | None = None
_ratio = 1.0  # TRACE_SAMPLE_RATIO once setup_tracing ran


def setup_tracing(settings: Settings) -> TracerProvider:
    """Install the process TracerProvider (idempotent)."""
    global _provider
    with _lock:
        if _provider is not None:
            return _provider
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

        global _ratio
        _ratio = settings.trace_sample_ratio
        # new traces are sampled by server_span (TRACE_SAMPLE_RATIO); the SDK follows its decision
        provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}), sampler=ParentBased(ALWAYS_ON)
        )
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
def server_span(name: str, carrier: Mapping[str, str], **attributes: Any) -> Iterator[Span]:
    """A SERVER span continuing the W3C context found in ``carrier`` (headers itself, not a dict copy);
    a non-recording one when the request is not sampled (see the module docstring)."""
    parent = otel_context.Context()
    sampled = random.random() < _ratio
    if carrier.get("traceparent"):
        parent = propagate.extract(carrier)
        found = trace.get_current_span(parent).get_span_context()
        if found.is_valid:
            sampled = found.trace_flags.sampled
    if sampled:
        token = otel_context.attach(parent)
        try:
            with tracer().start_as_current_span(name, kind=SpanKind.SERVER, attributes=attributes or None) as span:
                yield span
        finally:
            otel_context.detach(token)
        return
    span = _unsampled(parent)
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    try:
        yield span
    finally:
        otel_context.detach(token)


def _unsampled(parent: otel_context.Context) -> Span:
    """A span that records nothing: the parent's trace id (or a new one) and a new span id."""
    found = trace.get_current_span(parent).get_span_context()
    trace_id = found.trace_id if found.is_valid else random.getrandbits(128) or 1
    return NonRecordingSpan(
        SpanContext(
            trace_id,
            random.getrandbits(64) or 1,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.DEFAULT),
            trace_state=found.trace_state,
        )
    )


def child_span(name: str, **attributes: Any) -> AbstractContextManager[object]:
    """A child span of the current one (a context manager); nothing at all when it would not be recorded."""
    if not trace.get_current_span().is_recording():
        return nullcontext()
    return tracer().start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes or None)


def trace_id_of(span: Span) -> str:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def outgoing_headers() -> dict[str, str]:
    """The W3C headers (``traceparent``, ``tracestate``) of the current context."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    headers = {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}
    if ctx.trace_state:
        headers["tracestate"] = ctx.trace_state.to_header()
    return headers
