"""Scale to zero for real: the activator in front of a real Triton, the infer function behind it.

200 requests with ``Prefer: wait`` spread over a scale-down and the wake that follows all succeed; the
functions reach Triton only through the activator's ports, as ``kinfer up --scale-to-zero`` wires them.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shared.localstack.activator import Activator, ActivatorThread, Route, TritonPod
from shared.localstack.triton import TritonServer, default_repository
from tests.conftest import free_port
from tests.integration.servers import serve_function

pytestmark = pytest.mark.integration

MODEL = "iris_classifier"
ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture
def scaled(base_settings: Any, tmp_path: Path) -> Iterator[tuple[ActivatorThread, str]]:
    """Triton on internal ports behind an activator; the iris model registered at the activator's
    gRPC port; the infer function (``kinfer serve``) with that as TRITON_URL, never probing it."""
    from shared.services import Services

    internal = [free_port() for _ in range(3)]
    public_http, public_grpc = free_port(), free_port()
    server = TritonServer(default_repository(), tmp_path, *internal)  # strict: ready once every model is
    pod = TritonPod(server, start_timeout_s=120)
    running = ActivatorThread(
        Activator(
            pod,
            (Route(public_http, internal[0]), Route(public_grpc, internal[1])),
            idle_s=600,  # this test scales it to zero itself, at a known moment
            hold_s=90,
            tick_s=0.2,
        )
    )
    backend = f"127.0.0.1:{public_grpc}"
    settings = dataclasses.replace(base_settings, triton_url=backend, probe_triton_url=False, wait_max_s=90)
    services = Services(settings)
    name = f"{MODEL}-{uuid.uuid4().hex[:6]}"
    try:
        services.registry.create_model(
            {
                "name": name,
                "version": "1",
                "framework": "onnx",
                "format": "onnx",
                "backend_url": backend,
                "triton_model": MODEL,
            }
        )
        services.breakers.reset(backend)
    finally:
        services.close()
    try:
        with serve_function("infer", "run_inference", free_port(), settings) as base:
            yield running, f"{base}|{name}"
    finally:
        running.close()


def infer(base: str, name: str, wait: int | None) -> tuple[int, float]:
    body = json.dumps({"model": name, "input": {"data": ROW}}).encode()
    headers = {"Content-Type": "application/json", **({"Prefer": f"wait={wait}"} if wait else {})}
    request = urllib.request.Request(f"{base}/v1/infer", body, headers, method="POST")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            resp.read()
            return resp.status, time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, time.monotonic() - started


def test_200_requests_over_a_scale_down_and_wake_all_succeed_with_prefer_wait(
    scaled: tuple[ActivatorThread, str],
) -> None:
    running, where = scaled
    base, name = where.split("|")
    activator = running.activator
    assert infer(base, name, 60)[0] == 200  # warm: the function's connection to Triton is made
    outcomes: list[tuple[int, float]] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        outcome = infer(base, name, 60)
        with lock:
            outcomes.append(outcome)

    with ThreadPoolExecutor(16) as pool:
        futures = []
        for i in range(200):  # one every 20 ms: 4 s of traffic, the scale-down after the first 40
            if i == 40:
                assert running.call(activator.scale_to_zero())
                assert activator.state == "idle-stopped"
            futures.append(pool.submit(one, i))
            time.sleep(0.02)
        for f in futures:
            f.result(180)
    failed = [code for code, _ in outcomes if code != 200]
    assert len(outcomes) == 200 and not failed, f"{len(failed)} failed: {sorted(set(failed))}"
    assert activator.wakes == 2 and activator.state == "serving"  # started at fixture time, then woken once
    slowest = max(seconds for _, seconds in outcomes)
    assert activator.last_wake_s is not None and slowest >= activator.last_wake_s * 0.5, "nobody was held"


def test_without_prefer_wait_the_caller_gets_the_platforms_answer_and_the_wake_goes_on(
    scaled: tuple[ActivatorThread, str],
) -> None:
    """The activator holds the connection; the function's gRPC channel, cut by the scale-down, fails the
    call fast, so without ``Prefer: wait`` the caller gets the 503 with ``Retry-After`` (or the answer,
    when the channel reconnected first). Either way Triton wakes and serves the next request."""
    running, where = scaled
    base, name = where.split("|")
    assert infer(base, name, None)[0] == 200
    assert running.call(running.activator.scale_to_zero())
    code, _ = infer(base, name, None)
    assert code in (200, 503)
    assert running.activator.state in ("waking", "serving")
    deadline = time.monotonic() + 60
    while running.activator.state != "serving":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert infer(base, name, 30)[0] == 200
