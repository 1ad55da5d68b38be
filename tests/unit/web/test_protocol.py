"""The server's own answers (shared.web.protocol under uvicorn): JSON error bodies, bounded request heads.

Each case sends raw bytes over a socket to a real uvicorn serving an entry point that reads its body,
so the parser errors happen where they do in production: before the handler, or while it reads.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import Response

from shared.web.responses import json_response
from shared.web.server import SERVER_OPTIONS, asgi_adapter
from tests.conftest import free_port


async def _echo(request: Request) -> Response:
    body = await request.body()
    return json_response({"received": len(body)})


async def _broken(request: Request) -> Response:
    raise RuntimeError("a bug outside dispatch")


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    port = free_port()

    async def app(scope: dict, receive: object, send: object) -> None:
        entry = _broken if scope.get("path") == "/broken" else _echo
        await asgi_adapter(entry)(scope, receive, send)

    options = {k: v for k, v in SERVER_OPTIONS.items() if k not in ("loop", "lifespan")}
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", **options)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port
    srv.should_exit = True
    thread.join(10)


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw``, read until the server closes (or 5 s); the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


POST = b"POST /x HTTP/1.1\r\nHost: t\r\n"


@pytest.mark.parametrize(
    "raw,status,code,field",
    [
        (POST + b"Content-Length: abc\r\n\r\n{}", 400, "invalid_input", "Content-Length"),
        (POST + b"Content-Length: -1\r\n\r\n", 400, "invalid_input", "Content-Length"),
        (POST + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "invalid_input", "Content-Length"),
        (POST + b"Content-Length: 99999999999999999999999\r\n\r\n", 400, "invalid_input", "Content-Length"),
        (POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, "invalid_input", "body"),
        (POST + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nqq\r\n", 400, "invalid_input", "body"),
        (POST + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}", 400, "invalid_input", "Content-Length"),
        (b"GARBAGE\r\n\r\n", 400, "invalid_input", None),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "invalid_input", None),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "uri_too_long", None),
        (b"GET /x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431, "headers_too_large", None),
        (
            b"GET /x HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
            431,
            "headers_too_large",
            None,
        ),
    ],
    ids=[
        "cl-garbage",
        "cl-negative",
        "cl-duplicate",
        "cl-overflow",
        "chunk-size",
        "chunk-size-mid-body",
        "te-and-cl",
        "request-line",
        "http2-preface",
        "long-target",
        "big-header",
        "many-headers",
    ],
)
def test_protocol_errors_are_json_in_the_error_shape(
    server: int, raw: bytes, status: int, code: str, field: str | None
) -> None:
    got, headers, body = exchange(server, raw)
    assert got == status, body
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    payload = json.loads(body)
    assert payload["code"] == code and payload["error"] and payload.get("field") == field
    assert payload["request_id"] == headers["x-request-id"]


def test_a_header_arriving_slowly_is_bounded_too(server: int) -> None:
    """The bound holds across packets: httptools alone would buffer a header of any size."""
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        try:
            for _ in range(12):  # 96 KiB in separate packets
                sock.sendall(b"a" * 8192)
                time.sleep(0.01)
        except OSError:
            pass  # the server closed the connection
        answer = sock.recv(65536)
    assert b" 431 " in answer.split(b"\r\n")[0]


def test_well_formed_requests_still_pass(server: int) -> None:
    status, _, body = exchange(server, POST + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
    assert status == 200 and json.loads(body) == {"received": 2}
    chunked = POST + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    assert exchange(server, chunked)[0] == 200
    near_limit = b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: " + b"a" * 60_000 + b"\r\n\r\n"
    assert exchange(server, near_limit)[0] == 200


def test_a_large_body_sent_with_its_head_in_one_write_is_not_counted_as_head(server: int) -> None:
    body = b"x" * 200_000
    raw = POST + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    status, _, answer = exchange(server, raw)
    assert status == 200 and json.loads(answer) == {"received": len(body)}
    oversized = b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    assert exchange(server, oversized)[0] == 431  # one write, still bounded by what was parsed


def test_keep_alive_after_a_good_request_then_a_bad_one(server: int) -> None:
    raw = POST + b"Content-Length: 2\r\n\r\n{}" + POST + b"Content-Length: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 1 and data.count(b"HTTP/1.1 400") == 1


def test_an_exception_escaping_the_entry_point_is_a_json_500(server: int) -> None:
    status, headers, body = exchange(server, b"GET /broken HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    payload = json.loads(body)
    assert status == 500 and payload["code"] == "internal_error" and "bug" not in payload["error"]
    assert payload["request_id"] == headers["x-request-id"]


@pytest.mark.parametrize("sent", [b"", b"GET /echo HT", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Le"])
def test_a_request_head_that_stalls_is_answered_408_and_closed(
    server: int, monkeypatch: pytest.MonkeyPatch, sent: bytes
) -> None:
    """Half-sent request lines were never timed out: ~20,000 of them took every file descriptor."""
    from shared.web import protocol

    monkeypatch.setattr(protocol, "HEAD_TIMEOUT_S", 0.5)
    started = time.monotonic()
    status, _, body = exchange(server, sent)
    assert status == 408 and json.loads(body)["code"] == "request_timeout", body
    assert 0.4 < time.monotonic() - started < 4, "closed once the head timed out"


def test_a_whole_request_then_an_idle_keep_alive_connection_is_not_cut_by_the_head_timer(
    server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.web import protocol

    monkeypatch.setattr(protocol, "HEAD_TIMEOUT_S", 0.3)
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        time.sleep(0.6)  # idle between requests: uvicorn's keep-alive timeout governs, not the head timer
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
