"""The infer function over real HTTP under uvicorn (``kinfer serve``): concurrency, tracing, and
unchanged ``tritonclient.http`` (binary tensor extension) against the v2 route."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import requests

from tests.conftest import free_port
from tests.integration.servers import serve_function

pytestmark = pytest.mark.integration

ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def served(base_settings: Any, triton: Any) -> Iterator[tuple[str, dict, dict]]:
    from shared.services import reset_services

    settings = dataclasses.replace(base_settings, triton_url=triton.grpc_url)
    services = reset_services(settings)
    models = [
        services.registry.create_model(
            {
                "name": f"http-{m[:4]}-{uuid.uuid4().hex[:6]}",
                "version": "1.0",
                "framework": "python",
                "format": "python",
                "backend_url": triton.grpc_url,
                "triton_model": m,
            },
        )
        for m in ("iris_classifier", "vector_scorer")
    ]
    reset_services(None)
    with serve_function("infer", "run_inference", free_port(), settings) as base:
        yield base, models[0], models[1]


def test_twenty_concurrent_requests_all_succeed(served):
    base, iris, vector = served
    session = requests.Session()

    def one(i: int) -> tuple[int, Any]:
        model, data = (iris, ROW) if i % 2 else (vector, [float(i), 1.0, 2.0])
        r = session.post(f"{base}/v1/infer", json={"model": model["name"], "input": {"data": data}}, timeout=30)
        return r.status_code, r.json()["prediction"]

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, range(20)))
    assert [s for s, _ in answers] == [200] * 20
    assert {p for i, (_, p) in enumerate(answers) if i % 2} == {"setosa"}


def test_trace_continuity_over_http(served):
    base, iris, _ = served
    trace_id = uuid.uuid4().hex
    r = requests.post(
        f"{base}/v1/infer",
        json={"model": iris["name"], "input": {"data": ROW}},
        timeout=30,
        headers={"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"},
    )
    assert r.status_code == 200 and r.headers["X-Trace-ID"] == trace_id
    # the body carries both ids beside each other, as error bodies do
    assert r.json()["trace_id"] == trace_id and r.json()["request_id"] == r.headers["X-Request-ID"]


def test_unknown_query_parameters_are_400_on_infer(served):
    base, iris, _ = served
    r = requests.post(f"{base}/v1/infer?timeout=5", json={"model": iris["name"], "input": {"data": ROW}}, timeout=30)
    assert r.status_code == 400 and r.json()["field"] == "timeout"
    assert "unknown query parameter 'timeout'" in r.json()["error"]


def test_tritonclient_http_works_against_the_v2_route(served):
    import tritonclient.http as httpclient

    base, iris, vector = served
    client = httpclient.InferenceServerClient(base.removeprefix("http://"))
    try:
        rows = np.array([ROW, [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
        tensor = httpclient.InferInput("features", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)  # binary tensor extension, tritonclient's default
        result = client.infer(iris["name"], [tensor], model_version="1.0")
        assert result.as_numpy("label").reshape(-1).tolist() == [0, 2]
        assert result.as_numpy("probabilities").shape == (2, 3)

        values = np.array([0.5, 3.0, 1.0], dtype=np.float32)
        tensor = httpclient.InferInput("values", [3], "FP32")
        tensor.set_data_from_numpy(values, binary_data=False)
        result = client.infer(vector["name"], [tensor], outputs=[httpclient.InferRequestedOutput("argmax")])
        assert result.as_numpy("argmax").tolist() == [1] and result.as_numpy("stats") is None
        assert client.get_model_metadata(iris["name"])["inputs"][0]["shape"] == [-1, 4]

        bad = httpclient.InferInput("features", [1, 3], "FP32")
        bad.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
        with pytest.raises(Exception, match=r"\[-1, 4\]"):
            client.infer(iris["name"], [bad])
    finally:
        client.close()
