"""The registry on the running local stack: internal port without auth, gateway with keys."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.conftest import http

pytestmark = pytest.mark.e2e


def test_every_function_is_healthy(stack: dict[str, str]) -> None:
    for name in ("gateway", "backends", "infer", "models"):
        status, body, _ = http("GET", f"{stack[name]}/health")
        assert status == 200, (name, body)
        assert body["status"] in ("healthy", "degraded"), (name, body)


def test_register_and_fetch_on_the_internal_port(stack: dict[str, str]) -> None:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    model = {
        "name": name,
        "version": "1.0",
        "framework": "onnx",
        "format": "onnx",
        "backend_url": "127.0.0.1:8001",
        "triton_model": "iris_classifier",
    }
    status, created, headers = http("POST", f"{stack['models']}/v1/models", model)
    assert status == 201 and headers["X-Request-ID"]
    status, fetched, _ = http("GET", f"{stack['models']}/v1/models/{created['id']}")
    assert status == 200 and fetched == created
    status, by_name, _ = http("GET", f"{stack['models']}/v1/models/by-name/{name}/1.0")
    assert by_name["id"] == created["id"]
    status, listed, _ = http("GET", f"{stack['models']}/v1/models?name={name}")
    assert listed["total"] == 1
    assert http("DELETE", f"{stack['models']}/v1/models/{created['id']}")[0] == 204
    assert http("DELETE", f"{stack['models']}/v1/models/{created['id']}")[0] == 404


def test_gateway_requires_a_key_and_admin_for_writes(stack: dict[str, str]) -> None:
    status, body, headers = http("GET", f"{stack['gateway']}/v1/models")
    assert status == 401 and body["code"] == "unauthorized" and "Bearer" in headers["WWW-Authenticate"]
    assert http("GET", f"{stack['gateway']}/v1/models", key="wrong-key")[0] == 401
    status, body, headers = http("GET", f"{stack['gateway']}/v1/models?limit=5", key=stack["key"])
    assert status == 200 and "X-RateLimit-Limit" in headers
    demo = {
        m["name"]
        for m in http("GET", f"{stack['gateway']}/v1/models?tag=demo&limit=500", key=stack["key"])[1]["models"]
    }
    assert {"iris_classifier", "vector_scorer", "text_sentiment", "tiny_lm"} <= demo, "kinfer up seeds the demo models"
