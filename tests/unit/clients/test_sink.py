"""CloudEvents out: emit to K_SINK in binary mode, with the trace, errors translated."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from opentelemetry.sdk.trace import TracerProvider

from shared.batch.events import CHUNK_EVENT_TYPE, REQUEST_EVENT_TYPE
from shared.clients.sink import emit
from shared.errors import BackendError, Unavailable
from shared.settings import Settings

PORT = 18180


class _Sink:
    """A local HTTP server that records each POST and answers ``status``."""

    def __init__(self, port: int) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 202
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                sink.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                self.send_response(sink.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{port}/kinfer/batch-chunks"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture(scope="module")
def sink() -> Iterator[_Sink]:
    srv = _Sink(PORT)
    yield srv
    srv.server.shutdown()
    srv.server.server_close()


@pytest.fixture(autouse=True)
def _reset(sink: _Sink) -> None:
    sink.requests.clear()
    sink.status = 202


def test_emit_posts_a_binary_mode_event(sink):
    emit(
        sink.url,
        type=CHUNK_EVENT_TYPE,
        source="/kinfer/batch",
        subject="job-7",
        data={"job_id": "job-7", "chunk": 2},
        extensions={"partitionkey": "job-7"},
        id="job-7/2",
    )
    [req] = sink.requests
    headers = req["headers"]
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-type"] == "dev.kinfer.batch.chunk.v1"
    assert headers["ce-source"] == "/kinfer/batch"
    assert headers["ce-subject"] == "job-7"
    assert headers["ce-id"] == "job-7/2"
    assert headers["ce-partitionkey"] == "job-7"
    assert headers["content-type"] == "application/json"
    assert "ce-traceparent" not in headers  # no active span
    assert json.loads(req["body"]) == {"job_id": "job-7", "chunk": 2}


def test_emit_reads_k_sink_from_settings_and_carries_the_trace(sink):
    tracer = TracerProvider().get_tracer("test")
    settings = Settings.from_env({}, k_sink=sink.url)
    with tracer.start_as_current_span("submit") as span:
        emit(settings, type=REQUEST_EVENT_TYPE, source="/kinfer/batch", subject=None, data={"a": 1})
        trace_id = format(span.get_span_context().trace_id, "032x")
    headers = sink.requests[0]["headers"]
    assert headers["ce-traceparent"].split("-")[1] == trace_id
    assert "ce-subject" not in headers and headers["ce-id"]


@pytest.mark.parametrize(
    "status,error",
    [(503, Unavailable), (500, Unavailable), (429, Unavailable), (400, BackendError), (404, BackendError)],
)
def test_emit_translates_sink_answers(sink, status, error):
    sink.status = status
    with pytest.raises(error):
        emit(sink.url, type=CHUNK_EVENT_TYPE, source="/s", subject="j", data={})


def test_emit_to_an_unreachable_or_missing_sink_is_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(Unavailable) as err:
        emit(f"http://127.0.0.1:{port}/", type=CHUNK_EVENT_TYPE, source="/s", subject="j", data={})
    assert err.value.retryable
    with pytest.raises(Unavailable, match="K_SINK"):
        emit(Settings.from_env({}, k_sink=""), type=CHUNK_EVENT_TYPE, source="/s", subject="j", data={})


def test_emit_reuses_the_given_session(sink):
    session = requests.Session()
    for _ in range(3):
        emit(sink.url, type=CHUNK_EVENT_TYPE, source="/s", subject="j", data={}, session=session)
    assert len(sink.requests) == 3
    assert len(session.adapters["http://"].poolmanager.pools) == 1
