"""Versions are real: a pushed file is served, each version by its own Triton version, and the answer
says which version answered (v1 body, v2 body, X-Model-Version; the batch path too)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.lifecycle.conftest import Lifecycle, unique
from tests.lifecycle_support import linear_onnx

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_versions(life: Lifecycle) -> tuple[str, dict[str, Any], dict[str, Any]]:
    name = unique("lin")
    v1 = life.push(name, "1", linear_onnx(2.0))
    v2 = life.push(name, "2", linear_onnx(3.0))
    assert v1["state"] == v2["state"] == "ready", (v1, v2)
    return name, v1, v2


def test_each_version_answers_with_its_own_model(life: Lifecycle, two_versions: Any) -> None:
    name, v1, v2 = two_versions
    assert (v1["triton_model"], v1["triton_version"], v2["triton_version"]) == (name, 1, 2)
    for version, expected in (("1", 8.0), ("2", 12.0)):
        resp = life.infer(name, 4.0, version)
        assert resp.status_code == 200, resp.text
        assert resp.json()["outputs"]["y"] == [expected] and resp.json()["version"] == version
        assert resp.headers["X-Model-Version"] == version


def test_no_version_means_the_newest_ready_one(life: Lifecycle, two_versions: Any) -> None:
    name, _, _ = two_versions
    resp = life.infer(name, 1.0)
    assert resp.json()["version"] == "2" and resp.json()["outputs"]["y"] == [3.0]


def test_v2_protocol_sends_the_version_and_says_which_answered(life: Lifecycle, two_versions: Any) -> None:
    name, _, _ = two_versions
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 1], "data": [1.0, 2.0]}]}
    for version, expected in (("1", [2.0, 4.0]), ("2", [3.0, 6.0])):
        resp = life.infer_client.post(f"/v2/models/{name}/versions/{version}/infer", json=body)
        assert resp.status_code == 200, resp.text
        got = resp.json()
        assert got["model_version"] == version and got["outputs"][0]["data"] == expected
        assert resp.headers["X-Model-Version"] == version


def test_the_batch_path_infers_the_version_of_the_job(life: Lifecycle, two_versions: Any) -> None:
    _, v1, v2 = two_versions
    items = [{"data": [1.0]}, {"data": [5.0]}]
    assert [r.outputs["y"] for r in life.services().items.infer_items(v1, items)] == [[2.0], [10.0]]
    assert [r.outputs["y"] for r in life.services().items.infer_items(v2, items)] == [[3.0], [15.0]]


def test_batch_jobs_resolve_an_alias_to_one_version(life: Lifecycle, two_versions: Any) -> None:
    name, _, _ = two_versions
    assert life.models.put(f"/v1/models/by-name/{name}/aliases/staging", json={"version": "1"}).status_code == 200
    model = life.services().registry.resolve_model(name, "staging", route_key="owner-a")
    assert (model["version"], model["triton_version"]) == ("1", 1)


def test_per_version_counters_and_latencies_are_in_metrics(life: Lifecycle, two_versions: Any) -> None:
    from tests.conftest import function_client

    name, _, _ = two_versions
    backends = function_client("backends", "serve_backends")
    counter = f'kinfer_model_requests_total{{model="{name}",outcome="ok",version="2"}}'
    latency = f'kinfer_model_request_duration_seconds_count{{model="{name}",version="1"}}'

    def read() -> tuple[float, float]:
        life.services().version_recorder.flush()
        values = dict(
            line.rsplit(" ", 1)
            for line in backends.get("/metrics").text.splitlines()
            if line.startswith((counter, latency))
        )
        return float(values.get(counter, 0)), float(values.get(latency, 0))

    before = read()
    for version in ("1", "2", "2"):
        assert life.infer(name, 1.0, version).status_code == 200
    after = read()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)


def test_version_status_shows_the_replica_that_loaded_it(life: Lifecycle, two_versions: Any) -> None:
    _, v1, _ = two_versions
    deadline = time.monotonic() + 10
    while True:
        status = life.models.get(f"/v1/models/{v1['id']}/status").json()
        backend = status["backends"][life.triton.grpc_url]
        if backend["loaded"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status["state"] == "ready" and backend["live"] == 1 and backend["loaded"] == 1
    assert backend["replicas"][0]["synced"] is True
