"""The backends function against real Triton/Redis/PostgreSQL: probe tick, health, metrics, balancing."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.backends.balancer import probe_key
from shared.backends.breaker import read_states
from shared.errors import Unavailable
from tests.conftest import free_port, function_client

pytestmark = pytest.mark.integration

ROW = [5.1, 3.5, 1.4, 0.2]


def register(services: Any, urls: list[str]) -> dict:
    return services.registry.create_model(
        {
            "name": f"be-{uuid.uuid4().hex[:8]}",
            "version": "1",
            "framework": "onnx",
            "format": "onnx",
            "backend_urls": urls,
            "triton_model": "iris_classifier",
        },
    )


@pytest.fixture
def svc(base_settings: Any, triton: Any) -> Iterator[Any]:
    from shared.services import reset_services

    settings = dataclasses.replace(
        base_settings, triton_url=triton.grpc_url, breaker_fail_max=2, breaker_reset_timeout_s=30.0
    )
    yield reset_services(settings)
    reset_services(None)


@pytest.fixture
def backends_client(svc: Any) -> Any:
    return function_client("backends", "serve_backends")


@pytest.fixture
def infer_client(svc: Any) -> Any:
    return function_client("infer", "run_inference")


def ping_binary(client: Any) -> Any:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": uuid.uuid4().hex,
        "ce-type": "dev.knative.sources.ping",
        "ce-source": "/apis/v1/namespaces/kinfer/pingsources/backends-probe",
    }
    return client.post("/", headers=headers)


def test_probe_tick_records_every_backend(backends_client, svc, triton):
    dead = f"127.0.0.1:{free_port()}"
    register(svc, [dead])
    r = ping_binary(backends_client)
    assert r.status_code == 200, r.json()
    results = {b["url"]: b for b in r.json()["backends"]}
    assert results[triton.grpc_url]["healthy"] is True and results[dead]["healthy"] is False
    stored = json.loads(svc.cache.client.get(probe_key(dead)))
    assert stored["healthy"] is False and stored["last_checked"] and stored["latency_ms"] >= 0

    structured = {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "type": "dev.knative.sources.ping",
        "source": "/pingsources/backends-probe",
        "datacontenttype": "application/json",
        "data": {},
    }
    r = backends_client.post(
        "/", content=json.dumps(structured), headers={"Content-Type": "application/cloudevents+json"}
    )
    assert r.status_code == 200 and r.json()["probed"] >= 2
    r = backends_client.post("/", content="not an event", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_input"


def test_health_reports_backends_with_breaker_state(backends_client, svc, triton):
    dead = f"127.0.0.1:{free_port()}"
    register(svc, [dead])
    for _ in range(2):
        svc.breakers.record_failure(dead, Unavailable("refused"))
    r = backends_client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "degraded"
    by_url = {b["url"]: b for b in body["backends"]}
    assert set(by_url[dead]) >= {"url", "healthy", "circuit", "failures", "last_checked", "latency_ms"}
    assert by_url[dead]["healthy"] is False and by_url[dead]["circuit"] == "open" and by_url[dead]["failures"] == 2
    assert by_url[triton.grpc_url]["healthy"] is True and by_url[triton.grpc_url]["circuit"] == "closed"


def metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def test_round_robin_over_two_urls_is_visible_in_metrics(backends_client, infer_client, svc, triton):
    port = triton.grpc_url.rsplit(":", 1)[1]
    a, b = f"127.0.0.1:{port}", f"localhost:{port}"
    model = register(svc, [a, b])
    for _ in range(10):
        r = infer_client.post("/v1/infer", json={"model": model["name"], "input": {"data": ROW}})
        assert r.status_code == 200
    svc.recorder.flush()  # the infer function flushes its tallies to Redis each second
    dead = f"127.0.0.1:{free_port()}"
    register(svc, [dead])
    for _ in range(2):
        svc.breakers.record_failure(dead, Unavailable("refused"))
    r = backends_client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    n_a = metric(text, "kinfer_backend_requests_total", backend=a, outcome="success")
    n_b = metric(text, "kinfer_backend_requests_total", backend=b, outcome="success")
    assert n_a is not None and n_b is not None and n_a >= 3 and n_b >= 3
    assert metric(text, "kinfer_circuit_state", backend=a) == 0
    assert metric(text, "kinfer_circuit_state", backend=dead) == 2
    assert metric(text, "kinfer_backend_request_duration_seconds_count", backend=b) >= 3


def test_failed_probe_is_skipped_and_connection_failure_retried(backends_client, infer_client, svc, triton):
    probed_dead, unprobed_dead = (f"127.0.0.1:{free_port()}" for _ in range(2))
    skipped = register(svc, [probed_dead, triton.grpc_url])
    assert ping_binary(backends_client).status_code == 200
    for _ in range(4):
        r = infer_client.post("/v1/infer", json={"model": skipped["name"], "input": {"data": ROW}})
        assert r.status_code == 200
    assert read_states(svc.cache.client, [probed_dead])[probed_dead].failures == 0  # never tried

    retried = register(svc, [unprobed_dead, triton.grpc_url])
    for _ in range(4):
        r = infer_client.post("/v1/infer", json={"model": retried["name"], "input": {"data": ROW}})
        assert r.status_code == 200  # one retry on the live backend when the dead one refuses
    assert read_states(svc.cache.client, [unprobed_dead])[unprobed_dead].state == "open"


def test_a_missing_model_degrades_but_does_not_take_the_backend_out(backends_client, svc, triton):
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    created = svc.registry.create_model(
        {"name": ghost, "version": "1", "framework": "onnx", "format": "onnx", "backend_url": triton.grpc_url}
    )
    try:
        _check_ghost(backends_client, triton, ghost)
    finally:
        svc.registry.delete_model(created["id"])


def _check_ghost(backends_client, triton, ghost):
    results = {b["url"]: b for b in ping_binary(backends_client).json()["backends"]}
    assert results[triton.grpc_url]["healthy"] is True
    assert ghost in results[triton.grpc_url]["models_not_ready"]
    assert "iris_classifier" not in results[triton.grpc_url]["models_not_ready"]
    body = backends_client.get("/health").json()
    assert body["status"] == "degraded"
    assert ghost in {m for b in body["backends"] for m in b["models_not_ready"]}
