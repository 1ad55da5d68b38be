"""The HTTP layer: the JSON error body, body parsing and limits, routing, request ids."""

from __future__ import annotations

import io

import pytest
from flask import Request
from werkzeug.test import EnvironBuilder

from shared.errors import CircuitOpen, InvalidInput, MethodNotAllowed, NotFound, PayloadTooLarge
from shared.web.http import Route, Router, error_response, parse_json_body, request_id_of


def test_error_body_has_code_field_and_ids() -> None:
    resp = error_response(InvalidInput("name is required", field="name"), "rid-1", "abc")
    assert resp.status_code == 400
    assert resp.get_json() == {"error": "name is required", "code": "invalid_input", "field": "name",
                               "request_id": "rid-1", "trace_id": "abc"}


def test_retry_after_header_is_rounded_up() -> None:
    resp = error_response(CircuitOpen("circuit breaker open", retry_after=2.2), "r", "")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "3"


def _request(body: bytes, content_length: int | None = None) -> Request:
    env = EnvironBuilder(method="POST", path="/x", input_stream=io.BytesIO(body),
                         content_type="application/json").get_environ()
    env["CONTENT_LENGTH"] = str(len(body) if content_length is None else content_length)
    return Request(env)


@pytest.mark.parametrize("body,reason", [(b"", "empty"), (b"{oops", "not valid JSON"),
                                         (b"[" * 50000 + b"]" * 50000, "nested too deeply"),
                                         (b'{"x": NaN}', "not valid JSON")])
def test_json_body_rejects_bad_input(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_json_body(_request(body), 10_000_000)
    assert reason in err.value.message and err.value.field == "body"


def test_json_body_limit_is_413_by_header_and_by_stream() -> None:
    with pytest.raises(PayloadTooLarge):
        parse_json_body(_request(b"{}", content_length=2048), 1024)
    big = b'{"a": "' + b"x" * 2000 + b'"}'
    req = _request(big)
    req.environ.pop("CONTENT_LENGTH")
    req.environ["wsgi.input_terminated"] = True  # chunked transfer: no length up front
    with pytest.raises(PayloadTooLarge):
        parse_json_body(req, 1024)


def test_router_404_and_405() -> None:
    router = Router([Route("/v1/things/<tid>", ("GET",), lambda call, tid: {})])
    route, params = router.match("/v1/things/7", "GET")
    assert params == {"tid": "7"}
    with pytest.raises(NotFound):
        router.match("/v1/other", "GET")
    with pytest.raises(MethodNotAllowed) as err:
        router.match("/v1/things/7", "DELETE")
    assert "GET" in err.value.headers["Allow"]


def test_request_id_echoed_only_when_sane() -> None:
    ok = Request(EnvironBuilder(headers={"X-Request-ID": "abc-123"}).get_environ())
    bad = Request(EnvironBuilder(headers={"X-Request-ID": "a b<script>"}).get_environ())
    assert request_id_of(ok) == "abc-123"
    assert request_id_of(bad) != "a b<script>" and len(request_id_of(bad)) == 32
