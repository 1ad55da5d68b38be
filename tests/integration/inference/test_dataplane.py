"""POST /v1/infer and the batch API against the real Triton, PostgreSQL and Redis (no mocks)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared import registry
from shared.inference.items import ItemResult, infer_items
from tests.conftest import function_client

pytestmark = pytest.mark.integration

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
VIRGINICA_ROW = [6.7, 3.0, 5.2, 2.3]
EXPECTED_IRIS = "'features' FP32 [4] (or a batch [n, 4])"


def register(services: Any, triton_model: str, urls: list[str], **extra: Any) -> dict:
    body = {"name": f"{triton_model[:4]}-{uuid.uuid4().hex[:8]}", "version": "1", "framework": "python",
            "format": "python", "backend_urls": urls, "triton_model": triton_model, **extra}
    return registry.create_model(services, body)


@pytest.fixture
def svc(base_settings: Any, triton: Any) -> Iterator[Any]:
    from shared.services import reset_services

    settings = dataclasses.replace(base_settings, triton_url=triton.grpc_url, max_body_bytes=65536)
    yield reset_services(settings)
    reset_services(None)


@pytest.fixture
def client(svc: Any) -> Any:
    return function_client("infer", "run_inference")


@pytest.fixture
def iris(svc: Any, triton: Any) -> dict:
    return register(svc, "iris_classifier", [f"grpc://{triton.grpc_url}"])


@pytest.fixture
def vector(svc: Any, triton: Any) -> dict:
    return register(svc, "vector_scorer", [triton.grpc_url])


def test_iris_single_row_gives_class_name_and_every_output(client, iris):
    r = client.post("/v1/infer", json={"model": iris["name"], "input": {"data": IRIS_ROW}})
    assert r.status_code == 200, r.json()
    body = r.json()
    assert body["prediction"] == "setosa" and body["model"] == iris["name"] and body["version"] == "1"
    assert body["outputs"]["label"] == [0] and len(body["outputs"]["probabilities"]) == 3
    assert abs(sum(body["outputs"]["probabilities"]) - 1) < 1e-4
    assert body["latency_ms"] > 0 and body["request_id"] == r.headers["X-Request-ID"] and body["timestamp"]


def test_iris_batch_by_tensor_name_and_pinned_version(client, iris):
    rows = [IRIS_ROW, VIRGINICA_ROW] * 40  # 80 rows > max_batch_size 64: two Triton requests
    r = client.post("/v1/infer", json={"model": iris["name"], "version": "1", "input": {"features": rows}})
    assert r.status_code == 200, r.json()
    body = r.json()
    assert body["prediction"] == ["setosa", "virginica"] * 40
    assert len(body["outputs"]["probabilities"]) == 80 and body["outputs"]["label"][1] == [2]


def test_vector_scorer_dynamic_length(client, vector):
    for values in ([1.0, 2.0, 3.0], [9.0] + [0.0] * 20):
        r = client.post("/v1/infer", json={"model": vector["name"], "input": {"values": values}})
        assert r.status_code == 200, r.json()
        body = r.json()
        assert body["prediction"] == max(range(len(values)), key=values.__getitem__)
        assert len(body["outputs"]["probabilities"]) == len(values) and len(body["outputs"]["stats"]) == 4


def test_unknown_model_and_inactive_version_are_404(client, svc, triton):
    r = client.post("/v1/infer", json={"model": f"nope-{uuid.uuid4().hex[:6]}", "input": {"data": IRIS_ROW}})
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    inactive = register(svc, "iris_classifier", [triton.grpc_url], status="inactive")
    r = client.post("/v1/infer", json={"model": inactive["name"], "input": {"data": IRIS_ROW}})
    assert r.status_code == 404 and "no active version" in r.json()["error"]
    r = client.post("/v1/infer", json={"model": inactive["name"], "version": "1", "input": {"data": IRIS_ROW}})
    assert r.status_code == 404 and "inactive" in r.json()["error"]


@pytest.mark.parametrize("payload, field, phrase", [
    ({}, "input", "input is required"),
    ({"input": {}}, "input", "missing or empty"),
    ({"input": {"data": []}}, "input.features", "non-empty list"),
    ({"input": {"data": [1.0, 2.0, 3.0]}}, "input.features", "has shape [3]"),
    ({"input": {"data": [[1.0, 2.0], [3.0, 4.0, 5.0, 6.0]]}}, "input.features", "ragged"),
    ({"input": {"data": ["a", 1, 2, 3]}}, "input.features", "only numbers"),
    ({"input": {"data": [1, None, 2, 3]}}, "input.features", "only numbers"),
    ({"input": {"pixels": IRIS_ROW}}, "input.pixels", "unknown tensor 'pixels'"),
])
def test_bad_input_is_400_naming_what_was_expected(client, iris, payload, field, phrase):
    r = client.post("/v1/infer", json={"model": iris["name"], **payload})
    body = r.json()
    assert r.status_code == 400, body
    assert body["code"] == "invalid_input" and body["field"] == field and phrase in body["error"]
    if field != "input" or "missing" in phrase:
        assert EXPECTED_IRIS in body["error"]


def test_nan_is_rejected(client, iris):
    raw = '{"model": "' + iris["name"] + '", "input": {"data": [1e999, 1, 2, 3]}}'
    r = client.post("/v1/infer", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "infinity" in r.json()["error"]


def test_oversized_body_is_413(client, iris):
    rows = [IRIS_ROW] * 5000
    r = client.post("/v1/infer", json={"model": iris["name"], "input": {"data": rows}})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_traceparent_is_continued(client, iris):
    trace_id = uuid.uuid4().hex
    headers = {"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01", "X-Request-ID": "req-h4-1"}
    r = client.post("/v1/infer", json={"model": iris["name"], "input": {"data": IRIS_ROW}}, headers=headers)
    assert r.status_code == 200
    assert r.headers["X-Trace-ID"] == trace_id and r.headers["X-Request-ID"] == "req-h4-1"
    assert r.json()["request_id"] == "req-h4-1"


def test_v2_metadata_route(client, iris):
    r = client.get(f"/v2/models/{iris['name']}")
    assert r.status_code == 200
    assert r.json()["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]


def test_v2_json_body_validated(client, iris):
    good = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": IRIS_ROW}]}
    r = client.post(f"/v2/models/{iris['name']}/versions/1/infer", json=good)
    assert r.status_code == 200, r.json()
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["label"]["data"] == [0] and outputs["probabilities"]["shape"] == [1, 3]
    bad = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    r = client.post(f"/v2/models/{iris['name']}/infer", json=bad)
    assert r.status_code == 400 and "[-1, 4]" in r.json()["error"]


def test_infer_items_batches_and_reports_bad_items(svc, iris, vector):
    items = [{"data": IRIS_ROW}, {"data": [1, 2]}, {"features": VIRGINICA_ROW}, {"data": [IRIS_ROW, VIRGINICA_ROW]}]
    results = infer_items(svc, iris, items)
    assert [type(r) for r in results] == [ItemResult] * 4
    assert results[0].prediction == "setosa" and results[0].error is None
    assert results[1].prediction is None and "has shape [2]" in results[1].error
    assert results[2].prediction == "virginica" and results[2].outputs["label"] == [2]
    assert results[3].prediction == ["setosa", "virginica"]
    scored = infer_items(svc, vector, [{"data": [1, 5, 2]}, {"values": [3, 1]}, {"data": "x"}])
    assert [r.prediction for r in scored] == [1, 0, None] and "non-empty list" in scored[2].error


def test_infer_items_sends_batched_requests(svc, iris):

    rec = svc.recorder
    rec.flush_s = 3600  # keep the tallies in-process so they can be read here
    url = iris["backend_urls"][0].removeprefix("grpc://")
    before = rec._requests.get(f"{url}|success", 0)
    results = infer_items(svc, iris, [{"data": IRIS_ROW}] * 130)
    assert all(r.prediction == "setosa" for r in results)
    assert rec._requests.get(f"{url}|success", 0) - before == 3  # ceil(130 / 64) Triton requests
