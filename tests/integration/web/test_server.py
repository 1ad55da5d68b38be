"""The production server (``kinfer serve``, uvicorn): idle and half-sent connections do not stall it."""

from __future__ import annotations

import dataclasses
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.conftest import free_port
from tests.integration.servers import serve_gateway

pytestmark = pytest.mark.integration

IDLE, HALF_SENT = 200, 50


@pytest.fixture(scope="module")
def gateway(base_settings: Any, triton: Any) -> Iterator[tuple[str, dict]]:
    from shared.services import reset_services

    settings = dataclasses.replace(base_settings, triton_url=triton.grpc_url)
    model = reset_services(settings).registry.create_model(
        {
            "name": f"idle-{uuid.uuid4().hex[:8]}",
            "version": "1",
            "framework": "onnx",
            "format": "onnx",
            "backend_url": triton.grpc_url,
            "triton_model": "iris_classifier",
        },
    )
    reset_services(None)
    with serve_gateway(free_port(), settings) as base:
        yield base, model


def test_idle_and_half_sent_connections_do_not_stall_the_gateway(gateway: tuple[str, dict]) -> None:
    base, model = gateway
    port = int(base.rsplit(":", 1)[1])
    sockets = []
    try:
        for _ in range(IDLE):  # connected, never a byte
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        for _ in range(HALF_SENT):  # a request line and headers promising a body that never comes
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(
                b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"model":'
            )
            sockets.append(s)

        def normal(i: int) -> int:
            if i % 2:
                return requests.get(f"{base}/v1/models?limit=1", timeout=5).status_code  # a thread-pool handler
            return requests.post(
                f"{base}/v1/infer", timeout=5, json={"model": model["name"], "input": {"data": [5.1, 3.5, 1.4, 0.2]}}
            ).status_code

        with ThreadPoolExecutor(8) as pool:  # a request that waited for an idle socket's turn would time out
            assert list(pool.map(normal, range(40))) == [200] * 40
    finally:
        for s in sockets:
            s.close()
