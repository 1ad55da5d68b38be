"""POST /v1/infer and the batch API against the real Triton, PostgreSQL and Redis (no mocks)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from shared.inference.items import ItemResult
from tests.conftest import function_client

pytestmark = pytest.mark.integration

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
VIRGINICA_ROW = [6.7, 3.0, 5.2, 2.3]
EXPECTED_IRIS = "'features' FP32 [4] (or a batch [n, 4])"


def register(services: Any, triton_model: str, urls: list[str], **extra: Any) -> dict:
    body = {
        "name": f"{triton_model[:4]}-{uuid.uuid4().hex[:8]}",
        "version": "1",
        "framework": "python",
        "format": "python",
        "backend_urls": urls,
        "triton_model": triton_model,
        **extra,
    }
    return services.registry.create_model(body)


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


@pytest.mark.parametrize(
    "payload, field, phrase",
    [
        ({}, "input", "input is required"),
        ({"input": {}}, "input", "missing or empty"),
        ({"input": {"data": []}}, "input.features", "non-empty list"),
        ({"input": {"data": [1.0, 2.0, 3.0]}}, "input.features", "has shape [3]"),
        ({"input": {"data": [[1.0, 2.0], [3.0, 4.0, 5.0, 6.0]]}}, "input.features", "ragged"),
        ({"input": {"data": ["a", 1, 2, 3]}}, "input.features", "only numbers"),
        ({"input": {"data": [1, None, 2, 3]}}, "input.features", "only numbers"),
        ({"input": {"pixels": IRIS_ROW}}, "input.pixels", "unknown tensor 'pixels'"),
    ],
)
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
    results = svc.items.infer_items(iris, items)
    assert [type(r) for r in results] == [ItemResult] * 4
    assert results[0].prediction == "setosa" and results[0].error is None
    assert results[1].prediction is None and "has shape [2]" in results[1].error
    assert results[2].prediction == "virginica" and results[2].outputs["label"] == [2]
    assert results[3].prediction == ["setosa", "virginica"]
    scored = svc.items.infer_items(vector, [{"data": [1, 5, 2]}, {"values": [3, 1]}, {"data": "x"}])
    assert [r.prediction for r in scored] == [1, 0, None] and "non-empty list" in scored[2].error


def test_infer_items_sends_batched_requests(svc, iris):

    rec = svc.recorder
    rec.flush_s = 3600  # keep the tallies in-process so they can be read here
    url = iris["backend_urls"][0].removeprefix("grpc://")
    before = rec._requests.get(f"{url}|success", 0)
    results = svc.items.infer_items(iris, [{"data": IRIS_ROW}] * 130)
    assert all(r.prediction == "setosa" for r in results)
    assert rec._requests.get(f"{url}|success", 0) - before == 3  # ceil(130 / 64) Triton requests


# -- bad input is a 400 (or 415) with the JSON error body, never a 5xx ----------------------------
V2_GOOD = {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": IRIS_ROW}
SIZE = "inputs.features.parameters.binary_data_size"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"inputs": [{**V2_GOOD, "name": ["features"]}]}, "inputs[0].name"),
        ({"inputs": [{**V2_GOOD, "name": {"n": 1}}]}, "inputs[0].name"),
        ({"inputs": [V2_GOOD], "outputs": [{"name": ["label"]}]}, "outputs[0].name"),
        ({"inputs": [V2_GOOD], "outputs": [{"name": {"x": 1}}]}, "outputs[0].name"),
        ({"inputs": [V2_GOOD], "outputs": "label"}, "outputs"),
        ({"inputs": [V2_GOOD], "parameters": [1]}, "parameters"),
        ({"inputs": [V2_GOOD], "parameters": "x"}, "parameters"),
        ({"inputs": [{**V2_GOOD, "parameters": 5}]}, "inputs[0].parameters"),
        ({"inputs": [{**V2_GOOD, "parameters": {"binary_data_size": "abc"}}]}, SIZE),
        ({"inputs": [{**V2_GOOD, "parameters": {"binary_data_size": []}}]}, SIZE),
        ({"inputs": [{**V2_GOOD, "parameters": {"binary_data_size": {}}}]}, SIZE),
        ({"inputs": [{**V2_GOOD, "parameters": {"binary_data_size": -16}}]}, SIZE),
        ({"inputs": [{**V2_GOOD, "data": [1e39, 1, 2, 3]}]}, "inputs.features"),
        ({"inputs": [{**V2_GOOD, "shape": [1, "4"]}]}, "inputs.features"),
        ({"inputs": [V2_GOOD], "id": 7}, "id"),
    ],
)
def test_v2_malformed_fields_are_400_naming_them(client, iris, body, field):
    r = client.post(f"/v2/models/{iris['name']}/infer", json=body)
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["code"] == "invalid_input" and error["field"] == field and error["request_id"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4],'
        b' "parameters": {"binary_data_size": 1e400}}]}',
        b'{"inputs": [], "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}',
        b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [NaN, 2, 3, 4]}]}',
    ],
)
def test_v2_unparseable_numbers_and_duplicate_keys_are_400(client, iris, raw):
    r = client.post(f"/v2/models/{iris['name']}/infer", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_input" and r.json()["field"] == "body"


def test_v2_binary_tensors_with_nan_or_infinity_are_400(client, iris):
    header = json.dumps(
        {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}]}
    ).encode()
    for bad in (np.nan, np.inf):
        data = np.array([[bad, 1, 2, 3]], np.float32).tobytes()
        r = client.post(
            f"/v2/models/{iris['name']}/infer",
            content=header + data,
            headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 400 and "NaN or infinity" in r.json()["error"]
    good = np.array([IRIS_ROW], np.float32).tobytes()
    r = client.post(
        f"/v2/models/{iris['name']}/infer",
        content=header + good,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200 and r.json()["outputs"][0]["name"] == "label"


def test_values_beyond_fp32_are_400_and_answers_never_hold_nan(client, iris):
    r = client.post("/v1/infer", json={"model": iris["name"], "input": {"data": [1e39, 1, 2, 3]}})
    assert r.status_code == 400 and "beyond the FP32 range" in r.json()["error"]
    r = client.post("/v1/infer", json={"model": iris["name"], "input": {"data": [3e38, 3e38, 3e38, 3e38]}})
    assert r.status_code == 200 and b"NaN" not in r.content and b"Infinity" not in r.content


@pytest.mark.parametrize(
    "raw, content_type, status",
    [
        (b'{"model": "m", "model": "n", "input": {"data": [1, 2, 3, 4]}}', "application/json", 400),
        (b'{"model": "m", "input": {"data": [1, 2, 3, 4]}}', "text/plain", 415),
        (b'{"model": "m", "input": {"data": [1, 2, 3, 4]}}', "application/xml", 415),
    ],
)
def test_duplicate_keys_400_and_non_json_content_types_415(client, raw, content_type, status):
    r = client.post("/v1/infer", content=raw, headers={"Content-Type": content_type})
    assert r.status_code == status and r.json()["request_id"]
    assert r.json()["code"] == ("invalid_input" if status == 400 else "unsupported_media_type")


def test_rows_and_elements_per_request_are_bounded_naming_the_limit(base_settings, triton):
    from shared.services import reset_services

    settings = dataclasses.replace(base_settings, triton_url=triton.grpc_url, max_infer_rows=10, max_infer_elements=60)
    svc = reset_services(settings)
    try:
        model = register(svc, "iris_classifier", [triton.grpc_url])
        vec = register(svc, "vector_scorer", [triton.grpc_url])
        client = function_client("infer", "run_inference")
        r = client.post("/v1/infer", json={"model": model["name"], "input": {"data": [IRIS_ROW] * 11}})
        assert r.status_code == 400 and "at most 10 (MAX_INFER_ROWS)" in r.json()["error"]
        assert "POST /v1/batch" in r.json()["error"]
        assert (
            client.post("/v1/infer", json={"model": model["name"], "input": {"data": [IRIS_ROW] * 10}}).status_code
            == 200
        )
        r = client.post("/v1/infer", json={"model": vec["name"], "input": {"data": [1.0] * 61}})
        assert r.status_code == 400 and "at most 60 (MAX_INFER_ELEMENTS)" in r.json()["error"]
        v2 = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [11, 4], "data": [1.0] * 44}]}
        r = client.post(f"/v2/models/{model['name']}/infer", json=v2)
        assert r.status_code == 400 and "MAX_INFER_ROWS" in r.json()["error"] and r.json()["field"] == "inputs"
        v2 = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [16, 4], "data": [1.0] * 64}]}
        r = client.post(f"/v2/models/{model['name']}/infer", json=v2)
        assert r.status_code == 400 and "MAX_INFER_ELEMENTS" in r.json()["error"]
    finally:
        reset_services(None)


def test_public_errors_never_carry_the_backend_address_or_its_protocol_text(svc, private_redis):
    """A backend that is not Triton (a Redis port) fails with a message naming the model only."""
    port = private_redis.port
    model = register(svc, "iris_classifier", [f"127.0.0.1:{port}"])
    client = function_client("infer", "run_inference")
    r = client.post("/v1/infer", json={"model": model["name"], "input": {"data": IRIS_ROW}})
    assert r.status_code in (502, 503) and f"model {model['name']!r} version '1'" in r.json()["error"]
    for leak in (str(port), "127.0.0.1", "frame", "Socket", "StatusCode", "grpc"):
        assert leak not in r.json()["error"], leak


# -- coalescing ---------------------------------------------------------------------------------
def test_concurrent_single_rows_share_triton_requests_and_each_gets_its_own_answer(svc, iris, client):
    """Requests arriving together are merged (the recorder counts rows per Triton request); every caller
    still gets the prediction of its own row."""
    from concurrent.futures import ThreadPoolExecutor

    rec = svc.recorder
    rec.flush_s = 3600
    url = iris["backend_urls"][0].removeprefix("grpc://")
    rows = [IRIS_ROW if i % 2 else VIRGINICA_ROW for i in range(64)]

    def one(i: int) -> str:
        r = client.post("/v1/infer", json={"model": iris["name"], "input": {"data": rows[i]}})
        assert r.status_code == 200, r.text
        return r.json()["prediction"]

    for _ in range(5):
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(64)))
        assert answers == ["setosa" if i % 2 else "virginica" for i in range(64)]
        merged = sum(
            n
            for field, n in rec._rows.items()
            if field.startswith(f"{url}|") and not field.endswith("|sum") and field.rpartition("|")[2] not in ("0",)
        )
        if merged:
            break
    assert merged, "no Triton request carried more than one row"
    requests = sum(n for f, n in rec._rows.items() if f.startswith(f"{url}|") and not f.endswith("|sum"))
    assert rec._rows[f"{url}|sum"] > requests  # fewer Triton requests than rows
