"""Circuit breakers against real backends: a dead port trips, half-opens, closes when the backend is back;
state shared through Redis across processes; in-process fallback when Redis is down."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.backends.breaker import read_states
from tests.conftest import free_port, function_client

pytestmark = pytest.mark.integration

ROW = [5.1, 3.5, 1.4, 0.2]


def register(services: Any, urls: list[str]) -> dict:
    return services.registry.create_model(
        {
            "name": f"cb-{uuid.uuid4().hex[:8]}",
            "version": "1",
            "framework": "onnx",
            "format": "onnx",
            "backend_urls": urls,
            "triton_model": "iris_classifier",
        },
    )


class Forwarder:
    """A real TCP forwarder: the dead port comes back to life, relaying to the live Triton."""

    def __init__(self, port: int, target: int) -> None:
        self.server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.target = target
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.server.close()


@pytest.fixture
def svc(base_settings: Any, triton: Any) -> Iterator[Any]:
    from shared.services import reset_services

    settings = dataclasses.replace(
        base_settings, triton_url=triton.grpc_url, breaker_fail_max=2, breaker_reset_timeout_s=1.0, triton_timeout_s=2.0
    )
    yield reset_services(settings)
    reset_services(None)


@pytest.fixture
def client(svc: Any) -> Any:
    return function_client("infer", "run_inference")


def infer(client: Any, model: dict) -> Any:
    return client.post("/v1/infer", json={"model": model["name"], "input": {"data": ROW}})


def state_from_other_process(redis_url: str, url: str) -> dict:
    code = (
        "import json, redis, sys; from shared.backends.breaker import read_states; "
        "v = read_states(redis.Redis.from_url(sys.argv[1]), [sys.argv[2]])[sys.argv[2]]; "
        "print(json.dumps(v.as_json()))"
    )
    out = subprocess.run([sys.executable, "-c", code, redis_url, url], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_dead_backend_trips_half_opens_and_closes_when_back(client, svc, triton, base_settings):
    port = free_port()
    dead = f"127.0.0.1:{port}"
    model = register(svc, [dead])
    first = [infer(client, model) for _ in range(2)]
    assert [r.status_code for r in first] == [503, 503]
    body = first[0].json()
    assert body["code"] == "unavailable" and f"model {model['name']!r} version '1'" in body["error"]
    assert str(port) not in body["error"] and "127.0.0.1" not in body["error"]  # never the address (logged)

    tripped = infer(client, model)
    body = tripped.json()
    assert tripped.status_code == 503 and body["code"] == "circuit_open"
    assert "circuit breaker" in body["error"] and model["name"] in body["error"] and str(port) not in body["error"]
    assert 1 <= int(tripped.headers["Retry-After"]) <= 2
    seen = state_from_other_process(base_settings.redis_url, dead)
    assert seen["circuit"] == "open" and seen["failures"] >= 2

    time.sleep(2.1)  # reset_timeout 1 s (pybreaker stores opened_at in whole seconds)
    trial = infer(client, model)  # half-open trial against a still-dead backend: opens again
    assert trial.status_code == 503 and trial.json()["code"] == "unavailable"
    assert read_states(svc.cache.client, [dead])[dead].state == "open"

    forwarder = Forwarder(port, int(triton.grpc_url.rsplit(":", 1)[1]))
    try:
        deadline, answer = time.monotonic() + 15, None
        while time.monotonic() < deadline:
            time.sleep(1.1)
            answer = infer(client, model)
            if answer.status_code == 200:
                break
        assert answer is not None and answer.status_code == 200, answer.json()
        assert answer.json()["prediction"] == "setosa"
        after = state_from_other_process(base_settings.redis_url, dead)
        assert after["circuit"] == "closed" and after["failures"] == 0
    finally:
        forwarder.close()


def test_caller_errors_never_count(client, svc, triton):
    model = register(svc, [triton.grpc_url])
    for _ in range(4):
        r = client.post("/v1/infer", json={"model": model["name"], "input": {"data": [1, 2, 3]}})
        assert r.status_code == 400
    view = read_states(svc.cache.client, [triton.grpc_url])[triton.grpc_url]
    assert view.state == "closed" and view.failures == 0


def test_redis_down_uses_in_process_breakers_quickly(svc, triton, base_settings):
    from shared.services import reset_services

    live = register(svc, [triton.grpc_url])
    dead_url = f"127.0.0.1:{free_port()}"
    dead = register(svc, [dead_url])
    reset_services(dataclasses.replace(svc.settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    client = function_client("infer", "run_inference")
    started = time.monotonic()
    answers = [infer(client, live) for _ in range(5)]
    assert [r.status_code for r in answers] == [200] * 5
    codes = [infer(client, dead).json()["code"] for _ in range(3)]
    assert codes == ["unavailable", "unavailable", "circuit_open"]
    assert time.monotonic() - started < 5.0


def test_a_circuit_left_open_by_an_earlier_stack_closes_at_once_when_the_backend_is_healthy(svc, triton):
    """After a restart the shared circuit may still say open (Triton was down before): the first process to
    meet it asks Triton's readiness and closes it, instead of answering 503 until the reset timeout ends."""
    from shared.backends.breaker import Breakers
    from shared.services import reset_services

    model = register(svc, [triton.grpc_url])
    earlier = Breakers(dataclasses.replace(svc.settings, breaker_reset_timeout_s=600), svc.cache)
    earlier.breaker(triton.grpc_url).open()  # left open by the stack before the restart
    assert read_states(svc.cache.client, [triton.grpc_url])[triton.grpc_url].state == "open"
    reset_services(dataclasses.replace(svc.settings, breaker_reset_timeout_s=600))  # a fresh process
    client = function_client("infer", "run_inference")
    answer = infer(client, model)
    assert answer.status_code == 200, answer.json()
    assert read_states(svc.cache.client, [triton.grpc_url])[triton.grpc_url].state == "closed"


def test_a_circuit_left_open_stays_open_while_the_backend_is_down(svc):
    from shared.backends.breaker import Breakers
    from shared.services import reset_services

    dead = f"127.0.0.1:{free_port()}"
    model = register(svc, [dead])
    Breakers(dataclasses.replace(svc.settings, breaker_reset_timeout_s=600), svc.cache).breaker(dead).open()
    reset_services(dataclasses.replace(svc.settings, breaker_reset_timeout_s=600))
    answer = infer(function_client("infer", "run_inference"), model)
    assert answer.status_code == 503 and answer.json()["code"] == "circuit_open"
