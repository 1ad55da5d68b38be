"""OpenTelemetry: one TracerProvider per process, W3C context in and out.

Sampling is parent-based: a caller's ``traceparent`` decides (sampled stays sampled,
unsampled stays unsampled), and a new trace is recorded with probability
``TRACE_SAMPLE_RATIO``. ``server_span`` makes that decision itself, before the SDK is
involved: a recorded request gets an SDK span, an unrecorded one only a
``NonRecordingSpan`` carrying its trace id (``X-Trace-ID``, logs, the ``traceparent``
passed on with the sampled flag off), which costs a few microseconds. Child spans of an
unrecorded request are skipped and the outgoing header is formatted from the span
context directly. Recorded spans are exported over OTLP/HTTP when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, and kept in an in-memory ring of ``TRACE_BUFFER_SPANS``
spans when that is above 0 (the local stack's default), read by the admin-only ``GET /debug/traces``
of every function (``recent_spans``): traces to look at without a collector or a restart.

The second half of the module is the process's Prometheus counters (``Metrics``), served by every
function's ``/metrics``.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypedDict

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags

from shared.settings import Settings

_lock = threading.Lock()
_provider: TracerProvider | None = None
_ratio = 1.0  # TRACE_SAMPLE_RATIO once setup_tracing ran
_ring: SpanRing | None = None  # TRACE_BUFFER_SPANS > 0


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
        if settings.trace_buffer_spans > 0:
            global _ring
            _ring = SpanRing(settings.trace_buffer_spans, settings.service_name)
            provider.add_span_processor(_ring)
        trace.set_tracer_provider(provider)
        _provider = provider
        return provider


class SpanRecord(TypedDict):
    """One finished span as ``GET /debug/traces`` lists it."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    service: str
    start: str
    duration_ms: float
    status: str
    attributes: dict[str, object]


class SpanRing(SpanProcessor):
    """The last ``size`` finished spans of this process, in memory (appended as they end: no I/O)."""

    def __init__(self, size: int, service: str) -> None:
        self.spans: deque[SpanRecord] = deque(maxlen=size)
        self.service = service

    def on_end(self, span: ReadableSpan) -> None:
        from datetime import UTC, datetime

        ctx, start, end = span.context, span.start_time or 0, span.end_time or 0
        if ctx is None:
            return
        self.spans.append(
            {
                "trace_id": format(ctx.trace_id, "032x"),
                "span_id": format(ctx.span_id, "016x"),
                "parent_span_id": format(span.parent.span_id, "016x") if span.parent is not None else None,
                "name": span.name,
                "kind": span.kind.name,
                "service": self.service,
                "start": datetime.fromtimestamp(start / 1e9, UTC).isoformat(),
                "duration_ms": round((end - start) / 1e6, 3),
                "status": span.status.status_code.name,
                "attributes": {
                    k: v if isinstance(v, str | int | float | bool) else str(v)
                    for k, v in (span.attributes or {}).items()
                },
            }
        )


def recent_spans(trace_id: str | None = None, limit: int = 100) -> list[SpanRecord] | None:
    """The newest recorded spans first (of one trace when ``trace_id``); None when the ring is off."""
    if _ring is None:
        return None
    snapshot = list(_ring.spans)  # one C-level copy: spans that end meanwhile cannot break the iteration
    found = [s for s in reversed(snapshot) if trace_id is None or s["trace_id"] == trace_id]
    return found[:limit]


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


# -- metrics: this process's own counters, on every function's ``/metrics`` --------------------------
#
# Each process counts in memory what it does itself (Prometheus sums the pods of a Service, as for any
# per-pod metric); the backends function adds the cluster-wide backend and model-version counters it
# reads from Redis. Label values are bounded: ``key_id`` is a key's id (never its secret), the first
# ``MAX_KEY_LABELS`` ids a process sees get their own series and later ones share ``other``; an error
# ``code`` is one of the codes the code raises (at most ``MAX_CODE_LABELS``, then ``other``); every
# other label is a fixed set written below.

MAX_KEY_LABELS = 200
MAX_CODE_LABELS = 64
MAX_MODEL_LABELS = 200  # ``model`` of kinfer_tokens_total: registry names, then ``other``
NO_KEY = "none"  # a 4xx before a key was accepted (missing, unknown or malformed key)
OTHER = "other"
QUEUE_AGE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


class Metrics:
    """The process's counters (prometheus-client, a registry of its own)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.client_errors = Counter(
            "kinfer_http_client_errors",
            "4xx answers by API key id (never the secret; 'none' before a key was accepted), status and error code",
            ("key_id", "status", "code"),
            registry=reg,
        )
        self.batch_items = Counter(
            "kinfer_batch_items", "batch items recorded by this worker, by outcome", ("outcome",), registry=reg
        )
        self.batch_chunks = Counter(
            "kinfer_batch_chunks",
            "batch chunk deliveries by outcome: done, dead (dead-lettered, its items failed), error (raised, "
            "so the event is delivered again), skipped (duplicate or job no longer active)",
            ("outcome",),
            registry=reg,
        )
        self.batch_queue_age = Histogram(
            "kinfer_batch_chunk_queue_age_seconds",
            "time from a chunk event's creation to a worker taking it (consumer lag, retries included)",
            buckets=QUEUE_AGE_BUCKETS,
            registry=reg,
        )
        self.async_requests = Counter(
            "kinfer_async_requests",
            "async inference requests by transition: queued, running, succeeded, failed",
            ("state",),
            registry=reg,
        )
        self.async_callbacks = Counter(
            "kinfer_async_callbacks",
            "async request callback deliveries by outcome: delivered, refused, retried, dead_letter",
            ("outcome",),
            registry=reg,
        )
        self.capture_captured = Counter(
            "kinfer_capture_captured", "requests sampled by payload capture and queued for writing", registry=reg
        )
        self.capture_written = Counter(
            "kinfer_capture_written", "captured records written to the capture bucket", registry=reg
        )
        self.capture_dropped = Counter(
            "kinfer_capture_dropped",
            "captured records dropped, by reason: queue_full (the bounded queue), write_failed (S3 refused or down), "
            "unserialisable",
            ("reason",),
            registry=reg,
        )
        self.tokens = Counter(
            "kinfer_tokens",
            "tokens of the OpenAI-compatible routes by model, kind (prompt, completion) and API key id "
            "('anonymous' with AUTH_REQUIRED off)",
            ("model", "kind", "key_id"),
            registry=reg,
        )
        self._keys: set[str] = set()
        self._codes: set[str] = set()
        self._models: set[str] = set()
        self._lock = threading.Lock()

    def key_label(self, key_id: str | None) -> str:
        """The ``key_id`` label: the id itself for the first MAX_KEY_LABELS ids, then ``other``."""
        if not key_id:
            return NO_KEY
        return _bounded(key_id[:64], self._keys, MAX_KEY_LABELS, self._lock)

    def client_error(self, key_id: str | None, status: int, code: str) -> None:
        code_label = _bounded(code[:64], self._codes, MAX_CODE_LABELS, self._lock)
        self.client_errors.labels(self.key_label(key_id), str(status), code_label).inc()

    def tokens_used(self, key_id: str | None, model: str, prompt: int, completion: int) -> None:
        """Count one answer's prompt and completion tokens (``shared.access.tokens``)."""
        key = self.key_label(key_id)
        name = _bounded(model[:128], self._models, MAX_MODEL_LABELS, self._lock)
        if prompt:
            self.tokens.labels(name, "prompt", key).inc(prompt)
        if completion:
            self.tokens.labels(name, "completion", key).inc(completion)

    def queue_age(self, created: object) -> None:
        """Observe the age of an event whose ``time`` attribute is ``created`` (ISO 8601; ignored otherwise)."""
        from datetime import UTC, datetime

        if not isinstance(created, str):
            return
        try:
            at = datetime.fromisoformat(created)
        except ValueError:
            return
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        self.batch_queue_age.observe(max(0.0, (datetime.now(UTC) - at).total_seconds()))

    def text(self) -> tuple[bytes, str]:
        """(Prometheus text exposition, its content type)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _bounded(value: str, seen: set[str], limit: int, lock: threading.Lock) -> str:
    if value in seen:
        return value
    with lock:
        if value in seen or len(seen) < limit:
            seen.add(value)
            return value
    return OTHER


_metrics: Metrics | None = None


def metrics() -> Metrics:
    """The process's ``Metrics`` (built on first use: importing prometheus-client is left off cold starts)."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics
