"""The KServe Open Inference Protocol v2 surface of the gateway, driven by an unchanged ``tritonclient.http``
with an API key: server liveness, readiness and metadata (no key, like Triton's), model readiness, metadata,
configuration and inference per version (the ``infer`` scope)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from tests.conftest import free_port
from tests.integration.servers import serve_gateway

pytestmark = pytest.mark.integration

ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def gateway(base_settings: Any, triton: Any) -> Iterator[tuple[str, dict, str]]:
    from shared.services import reset_services

    settings = dataclasses.replace(base_settings, triton_url=triton.grpc_url, auth_required=True)
    services = reset_services(settings)
    model = services.registry.create_model(
        {
            "name": f"v2-{uuid.uuid4().hex[:8]}",
            "version": "1.0",
            "framework": "onnx",
            "format": "onnx",
            "backend_url": triton.grpc_url,
            "triton_model": "iris_classifier",
        },
    )
    key = services.keys.create_key(f"v2-{uuid.uuid4().hex[:6]}", "infer")[1]
    reset_services(None)
    with serve_gateway(free_port(), settings) as base:
        yield base, model, key


@pytest.fixture
def client(gateway: tuple[str, dict, str]) -> Iterator[Any]:
    import tritonclient.http as httpclient

    found = httpclient.InferenceServerClient(gateway[0].removeprefix("http://"))
    yield found
    found.close()


def test_server_health_and_metadata_need_no_key(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "kinfer" and meta["version"] and "binary_tensor_data" in meta["extensions"]


def test_model_readiness_metadata_and_config_per_version(client: Any, gateway: tuple[str, dict, str]) -> None:
    _, model, key = gateway
    auth = {"Authorization": f"Bearer {key}"}
    name = model["name"]
    assert client.is_model_ready(name, headers=auth)
    assert client.is_model_ready(name, model_version="1.0", headers=auth)
    assert not client.is_model_ready(name, model_version="9.9", headers=auth)
    assert not client.is_model_ready(f"nope-{uuid.uuid4().hex[:6]}", headers=auth)
    meta = client.get_model_metadata(name, model_version="1.0", headers=auth)
    assert meta["name"] == name and meta["versions"] == ["1.0"]
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    config = client.get_model_config(name, headers=auth)
    assert config["name"] == name and config["max_batch_size"] == 64
    assert {o["name"] for o in config["output"]} == {"label", "probabilities"}


def test_inference_with_binary_tensors_and_json(client: Any, gateway: tuple[str, dict, str]) -> None:
    import tritonclient.http as httpclient

    _, model, key = gateway
    auth = {"Authorization": f"Bearer {key}"}
    rows = np.array([ROW, [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    tensor = httpclient.InferInput("features", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    result = client.infer(model["name"], [tensor], model_version="1.0", headers=auth)
    assert result.as_numpy("label").reshape(-1).tolist() == [0, 2]
    tensor = httpclient.InferInput("features", [1, 4], "FP32")
    tensor.set_data_from_numpy(rows[:1], binary_data=False)
    result = client.infer(
        model["name"],
        [tensor],
        outputs=[httpclient.InferRequestedOutput("probabilities")],
        headers={"Authorization": f"Bearer {key}"},
    )  # tritonclient writes into the dict it gets
    assert result.as_numpy("probabilities").shape == (1, 3) and result.as_numpy("label") is None


def test_model_routes_need_a_key(gateway: tuple[str, dict, str]) -> None:
    base, model, _ = gateway
    for path in (
        f"/v2/models/{model['name']}",
        f"/v2/models/{model['name']}/ready",
        f"/v2/models/{model['name']}/versions/1.0/config",
    ):
        r = requests.get(base + path, timeout=10)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized", path
    assert requests.get(base + "/v2/health/live", timeout=10).json() == {"live": True}
