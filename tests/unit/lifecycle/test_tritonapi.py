"""The model agent's client of Triton's repository API sends the admin header that Triton's
``--http-restricted-api=model-repository:<header>=<key>`` asks for, and only when both are configured."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from shared.lifecycle.tritonapi import TritonRepositoryApi


@pytest.fixture
def triton() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.rfile.read(int(self.headers.get("content-length", 0)))
            allowed = self.headers.get("kinfer-triton-admin-key") == "s3cret"
            self.send_response(200 if allowed else 403)
            body = b"{}" if allowed else b'{"error":"This API is restricted"}'
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_the_admin_header_is_sent_on_repository_calls(triton: tuple[str, list[dict[str, str]]]) -> None:
    url, seen = triton
    api = TritonRepositoryApi(url, "kinfer-triton-admin-key", "s3cret")
    assert api.load("iris") is None and api.unload("iris") is None
    assert [h["kinfer-triton-admin-key"] for h in seen] == ["s3cret", "s3cret"]


def test_without_a_key_nothing_is_sent_and_triton_says_why(triton: tuple[str, list[dict[str, str]]]) -> None:
    url, seen = triton
    assert TritonRepositoryApi(url, "kinfer-triton-admin-key", "").load("iris") == "This API is restricted"
    assert "kinfer-triton-admin-key" not in seen[0]
