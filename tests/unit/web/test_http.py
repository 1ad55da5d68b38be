"""The HTTP layer: the JSON error body, body parsing and limits, routing, request ids."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.requests import Request

from shared.errors import (
    CircuitOpen,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from shared.web.request import parse_json, read_body, request_id_of, require_json
from shared.web.responses import error_response, json_response
from shared.web.route import Route
from shared.web.routing import Router


def test_error_body_has_code_field_and_ids() -> None:
    resp = error_response(InvalidInput("name is required", field="name"), "rid-1", "abc")
    assert resp.status_code == 400
    assert json.loads(resp.body) == {
        "error": "name is required",
        "code": "invalid_input",
        "field": "name",
        "request_id": "rid-1",
        "trace_id": "abc",
    }


def test_retry_after_header_is_rounded_up() -> None:
    resp = error_response(CircuitOpen("circuit breaker open", retry_after=2.2), "r", "")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "3"


def _request(chunks: list[bytes], content_length: int | None = None) -> Request:
    """A starlette Request whose body arrives in ``chunks`` (no Content-Length: chunked transfer)."""
    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> dict:
        return messages.pop(0)

    return Request({"type": "http", "method": "POST", "path": "/x", "headers": headers, "query_string": b""}, receive)


@pytest.mark.parametrize(
    "body,reason",
    [
        (b"", "empty"),
        (b"{oops", "not valid JSON"),
        (b"[" * 50000 + b"]" * 50000, "depth limit exceeded"),
        (b'{"x": NaN}', "not valid JSON"),
        (b'{"a": 1e400}', "infinity"),
        (b'{"a": "\\ud800"}', "surrogate"),
    ],
)
def test_json_body_rejects_bad_input(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_json(body)
    assert reason in err.value.message and err.value.field == "body"


def test_body_limit_is_413_by_header_and_by_stream() -> None:
    with pytest.raises(PayloadTooLarge, match="2048 bytes"):
        asyncio.run(read_body(_request([b"{}"], content_length=2048), 1024))
    big = [b'{"a": "', b"x" * 1000, b"x" * 1000, b'"}']
    with pytest.raises(PayloadTooLarge, match="exceeds the limit of 1024"):
        asyncio.run(read_body(_request(big), 1024))
    assert asyncio.run(read_body(_request([b'{"a":', b" 1}"]), 1024)) == b'{"a": 1}'
    with pytest.raises(InvalidInput, match="Content-Length"):
        asyncio.run(read_body(_bad_length(), 1024))


def _bad_length() -> Request:
    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "query_string": b"",
        "headers": [(b"content-length", "١٢".encode())],
    }
    return Request(scope, receive)


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
    assert request_id_of({"x-request-id": "abc-123"}) == "abc-123"
    bad = request_id_of({"x-request-id": "a b<script>"})
    assert bad != "a b<script>" and len(bad) == 32


def test_router_converters_static_first_trailing_slash_and_head() -> None:
    def h(call: object, **params: object) -> dict:
        return {}

    router = Router(
        [
            Route("/v1/batch/uploads", ("POST",), h),
            Route("/v1/batch/<job_id>", ("GET", "DELETE"), h),
            Route("/files/<path:key>", ("GET",), h),
            Route("/n/<int:n>", ("GET",), h),
        ]
    )
    route, params = router.match("/v1/batch/uploads", "POST")
    assert route.rule == "/v1/batch/uploads" and params == {}
    route, params = router.match("/v1/batch/uploads/", "GET")  # the static rule lacks GET: the dynamic one serves
    assert route.rule == "/v1/batch/<job_id>" and params == {"job_id": "uploads"}
    assert router.match("/files/a/b.jsonl", "GET")[1] == {"key": "a/b.jsonl"}
    assert router.match("/n/42", "HEAD")[1] == {"n": 42}
    with pytest.raises(NotFound):
        router.match("/n/x", "GET")
    with pytest.raises(MethodNotAllowed) as err:
        router.match("/v1/batch/7", "PUT")
    assert err.value.headers["Allow"] == "DELETE, GET, HEAD"
    with pytest.raises(ValueError, match="unknown converter"):
        Router([Route("/x/<uuid:x>", ("GET",), h)])


@pytest.mark.parametrize(
    "raw",
    [b'{"a": 1, "a": 2}', b'{"x": {"b": [1, {"c": 1, "c": 1}]}}', b'{"k\\u003a": 1, "k:": 2}', b'[{"m": 1, "m": 1}]'],
)
def test_duplicate_keys_are_400(raw: bytes) -> None:
    with pytest.raises(InvalidInput, match="same key twice") as err:
        parse_json(raw)
    assert err.value.field == "body"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": 1, "b": 2}',
        b'{"a:b": "c:d", "e": "\\":"}',
        b'[{"m": 1}, {"m": 2}]',
        b'{"model": "iris", "input": {"data": [5.1, 3.5, 1.4, 0.2]}}',
        b"[1, 2]",
    ],
)
def test_distinct_keys_parse(raw: bytes) -> None:
    assert parse_json(raw) == json.loads(raw)


@pytest.mark.parametrize(
    "content_type, ok",
    [
        (None, True),
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/merge-patch+json", True),
        ("application/x-www-form-urlencoded", True),
        ("text/plain", False),
        ("application/octet-stream", False),
        ("multipart/form-data; boundary=x", False),
    ],
)
def test_json_routes_take_json_content_types_only(content_type: str | None, ok: bool) -> None:
    if ok:
        require_json(content_type)
        return
    with pytest.raises(UnsupportedMediaType) as err:
        require_json(content_type)
    assert err.value.status == 415 and err.value.field == "Content-Type"


def test_json_response_never_emits_nan_or_infinity() -> None:
    import numpy as np

    resp = json_response({"a": float("nan"), "b": [float("inf")], "c": np.array([np.nan, 1.0], np.float32)})
    assert json.loads(resp.body) == {"a": None, "b": [None], "c": [None, 1.0]}


@pytest.mark.parametrize("path", ["/v1/things/a\x00b", "/v1/things/\udc80"])
def test_a_path_with_a_nul_or_a_lone_surrogate_is_404(path: str) -> None:
    router = Router([Route("/v1/things/<tid>", ("GET",), lambda call, tid: {})])
    with pytest.raises(NotFound):
        router.match(path, "GET")
