"""Parent-based sampling in server_span: sampled parents are recorded, the rest is not, trace ids flow either way."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from shared import telemetry
from shared.settings import Settings

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(autouse=True)
def tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    telemetry.setup_tracing(Settings.from_env(environ={}))
    monkeypatch.setattr(telemetry, "_ratio", 0.0)


class Seen:
    def __init__(self, span: trace.Span) -> None:
        self.span, self.recording = span, span.is_recording()

    def is_recording(self) -> bool:
        return self.recording


def _serve(headers: dict[str, str]) -> tuple[Seen, dict[str, str], bool]:
    with telemetry.server_span("test", headers) as span:
        with telemetry.child_span("child") as child:
            child_recorded = child is not None and child.is_recording()
        return Seen(span), telemetry.outgoing_headers(), child_recorded


def sampled(out: dict[str, str]) -> bool:
    return bool(int(out["traceparent"][-2:], 16) & 1)


def test_unsampled_parent_keeps_its_trace_and_records_nothing() -> None:
    span, out, child = _serve({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-00"})
    assert not span.is_recording() and not child
    assert telemetry.trace_id_of(span.span) == TRACE
    assert out["traceparent"].startswith(f"00-{TRACE}-") and not sampled(out)
    assert "00f067aa0ba902b7" not in out["traceparent"]  # a span id of our own


def test_sampled_parent_is_recorded_whatever_the_ratio() -> None:
    span, out, child = _serve({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    assert span.is_recording() and child
    assert telemetry.trace_id_of(span.span) == TRACE and sampled(out)


def test_new_traces_follow_the_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    unsampled = [_serve({}) for _ in range(20)]
    assert not any(s.is_recording() for s, _, _ in unsampled)
    assert len({telemetry.trace_id_of(s.span) for s, _, _ in unsampled}) == 20  # each request its own trace id
    assert all(len(telemetry.trace_id_of(s.span)) == 32 for s, _, _ in unsampled)
    monkeypatch.setattr(telemetry, "_ratio", 1.0)
    span, out, child = _serve({})
    assert span.is_recording() and child and sampled(out)


def test_a_malformed_traceparent_starts_a_new_trace() -> None:
    span, out, _ = _serve({"traceparent": "00-zz-yy-01"})
    assert len(telemetry.trace_id_of(span.span)) == 32 and out["traceparent"].startswith("00-")
