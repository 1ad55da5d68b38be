"""Every router's /metrics, the 4xx log line and the per-key 4xx counters (bounded labels), and the
process counters of batch chunks and async requests (``shared.telemetry``)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request

from shared import telemetry
from shared.access.auth import Principal
from shared.errors import Forbidden, RateLimited
from shared.settings import Settings
from shared.web.dispatch import dispatch
from shared.web.request import Call
from shared.web.route import Route
from shared.web.routing import Router


class _Auth:
    """A key ``good`` (id key-1) that is rate limited on /v1/limited and lacks ``admin``."""

    async def authorize(self, call: Call, scope: str) -> Principal:
        if call.header("authorization") == "Bearer admin":
            call.principal = Principal("key-0", "ops", frozenset({"admin"}))
            return call.principal
        principal = Principal("key-1", "app", frozenset({"infer"}))
        if call.header("authorization") != "Bearer good":
            from shared.errors import Unauthorized

            raise Unauthorized("invalid or revoked API key")
        call.principal = principal
        if scope == "admin":
            raise Forbidden("this API key lacks the 'admin' scope")
        if call.request.url.path == "/v1/limited":
            raise RateLimited("rate limit exceeded", retry_after=1)
        return principal


ROUTER = Router(
    [
        Route("/v1/things", ("GET",), lambda call: {"ok": True}, scope="infer", query=()),
        Route("/v1/limited", ("GET",), lambda call: {"ok": True}, scope="infer", query=()),
        Route("/v1/admin", ("GET",), lambda call: {"ok": True}, scope="admin", query=()),
        Route("/v1/predict", ("GET",), lambda call: {"ok": True}, scope="infer", always_auth=True, query=()),
    ]
)


def run(path: str, key: str | None = "good", query: str = "", auth_required: bool = True) -> Any:
    settings = Settings.from_env(environ={}, auth_required=auth_required)
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query.encode(), "headers": headers}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    host = SimpleNamespace(settings=settings, auth=_Auth())
    return asyncio.run(dispatch(Request(scope, receive), ROUTER, host, "test"))


def _count(key_id: str, status: str, code: str) -> float:
    value = telemetry.metrics().registry.get_sample_value(
        "kinfer_http_client_errors_total", {"key_id": key_id, "status": status, "code": code}
    )
    return value or 0.0


def test_every_router_serves_its_process_metrics() -> None:
    telemetry.metrics().async_requests.labels("queued").inc()
    response = run("/metrics", key=None)  # no scope: Prometheus scrapes without a key
    assert response.status_code == 200 and response.media_type.startswith("text/plain")
    text = response.body.decode()
    assert "kinfer_async_requests_total" in text and "kinfer_http_client_errors_total" in text
    assert any(r.rule == "/metrics" for r in ROUTER.routes)


def test_a_4xx_is_logged_at_info_with_its_ids_and_counted_per_key(caplog: pytest.LogCaptureFixture) -> None:
    before = (
        _count("key-1", "429", "rate_limited"),
        _count("key-1", "403", "forbidden"),
        _count("none", "401", "unauthorized"),
    )
    with caplog.at_level(logging.INFO, logger="shared.web.dispatch"):
        limited = run("/v1/limited")
        forbidden = run("/v1/admin")
        unknown = run("/v1/things", key="kf_secret_never_logged")
    assert (limited.status_code, forbidden.status_code, unknown.status_code) == (429, 403, 401)
    assert _count("key-1", "429", "rate_limited") == before[0] + 1
    assert _count("key-1", "403", "forbidden") == before[1] + 1
    assert _count("none", "401", "unauthorized") == before[2] + 1
    lines = [r for r in caplog.records if r.getMessage().startswith("client error")]
    assert len(lines) == 3 and all(r.levelno == logging.INFO for r in lines)
    first = lines[0].getMessage()
    assert "429 rate_limited" in first and "GET /v1/limited" in first and "key_id=key-1" in first
    assert f"request_id={limited.headers['x-request-id']}" in first
    assert "key_id=none" in lines[2].getMessage()
    assert all("kf_secret_never_logged" not in r.getMessage() for r in caplog.records)


def test_a_404_names_the_path_when_no_route_matched(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="shared.web.dispatch"):
        assert run("/v1/nothing").status_code == 404
    assert any("404 not_found: GET /v1/nothing" in r.getMessage() for r in caplog.records)


def test_key_and_code_labels_are_bounded() -> None:
    metrics = telemetry.Metrics()
    labels = [metrics.key_label(f"key-{i}") for i in range(telemetry.MAX_KEY_LABELS + 50)]
    assert len(set(labels)) == telemetry.MAX_KEY_LABELS + 1 and labels[-1] == telemetry.OTHER
    assert metrics.key_label("key-0") == "key-0" and metrics.key_label(None) == telemetry.NO_KEY
    for i in range(telemetry.MAX_CODE_LABELS + 10):
        metrics.client_error("k", 400, f"code_{i}")
    codes = {
        s.labels["code"] for m in metrics.registry.collect() for s in m.samples if m.name == "kinfer_http_client_errors"
    }
    assert len(codes) == telemetry.MAX_CODE_LABELS + 1 and telemetry.OTHER in codes


def test_queue_age_is_observed_from_the_event_time_and_bad_times_are_ignored() -> None:
    metrics = telemetry.Metrics()
    metrics.queue_age((datetime.now(UTC) - timedelta(seconds=30)).isoformat())
    metrics.queue_age("not a time")
    metrics.queue_age(None)
    count = metrics.registry.get_sample_value("kinfer_batch_chunk_queue_age_seconds_count")
    assert count == 1
    assert metrics.registry.get_sample_value("kinfer_batch_chunk_queue_age_seconds_bucket", {"le": "15.0"}) == 0
    assert metrics.registry.get_sample_value("kinfer_batch_chunk_queue_age_seconds_bucket", {"le": "60.0"}) == 1


def test_debug_traces_lists_recorded_spans_to_admins_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.setattr(telemetry, "_ring", None)
    off = run("/debug/traces", key="admin")
    assert off.status_code == 404 and json.loads(off.body)["code"] == "traces_off"
    ring = telemetry.SpanRing(2, "svc")
    provider = TracerProvider()
    provider.add_span_processor(ring)
    tracer = provider.get_tracer("t")
    for name in ("first", "second", "third"):  # the ring keeps the last two
        with tracer.start_as_current_span(name, attributes={"kinfer.model": "iris"}) as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
    monkeypatch.setattr(telemetry, "_ring", ring)
    assert run("/debug/traces", key="good").status_code == 403
    assert run("/debug/traces", key=None).status_code == 401
    listed = json.loads(run("/debug/traces", key="admin").body)
    assert [s["name"] for s in listed["spans"]] == ["third", "second"] and listed["count"] == 2
    assert listed["spans"][0]["attributes"] == {"kinfer.model": "iris"} and listed["spans"][0]["service"] == "svc"
    one = json.loads(run("/debug/traces", key="admin", query=f"trace_id={trace_id}").body)
    assert [s["trace_id"] for s in one["spans"]] == [trace_id]
    bad = run("/debug/traces", key="admin", query="trace_id=xyz")
    assert bad.status_code == 400 and json.loads(bad.body)["field"] == "trace_id"


def test_auth_required_off_opens_plain_routes_but_never_inference_or_debug_routes() -> None:
    assert run("/v1/admin", key=None, auth_required=False).status_code == 200  # the local registry's clients
    assert run("/v1/predict", key=None, auth_required=False).status_code == 401
    assert run("/v1/predict", key="bad", auth_required=False).status_code == 401
    assert run("/v1/predict", key="good", auth_required=False).status_code == 200
    assert run("/debug/traces", key=None, auth_required=False).status_code == 401
    assert run("/debug/traces", key="good", auth_required=False).status_code == 403


def test_the_models_function_asks_a_key_for_kserve_predict_and_debug_routes() -> None:
    from functions.models.main import ROUTES

    guarded = {r.rule for r in ROUTES.routes if r.always_auth}
    assert guarded == {"/v1/models/<name>:predict", "/v1/models/<name>/versions/<version>:predict", "/debug/traces"}
