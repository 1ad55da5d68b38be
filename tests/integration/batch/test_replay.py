"""Replay of captured traffic as a batch job on real services (PostgreSQL, Redis, the S3 server, the event
relay, Triton): requests captured through the infer function are replayed on a candidate version, and the
finished job's status compares its answers with the captured ones."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import function_client
from tests.integration.batch.test_batch import IRIS, Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def replay_stack(base_settings: Any, triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(base_settings, triton, tmp_path_factory.mktemp("replay"))
    yield s
    s.stop()


def register(services: Any, name: str, version: str, triton_model: str, backend: str) -> None:
    body = {"name": name, "version": version, "framework": "onnx", "format": "onnx"}
    services.registry.create_model({**body, "backend_url": backend, "triton_model": triton_model})


def capture_traffic(st: Stack, name: str, field: str = "features") -> None:
    """Capture every request of ``name`` (version 1): three v1 answers, one v2 answer, one failure."""
    models, infer = function_client("models", "manage_models"), function_client("infer", "run_inference")
    put = models.put(f"/v1/models/by-name/{name}/capture", json={"sample_percent": 100})
    assert put.status_code == 200, put.text
    for row in IRIS:
        r = infer.post("/v1/infer", json={"model": name, "version": "1", "input": {field: row}})
        assert r.status_code == 200, r.text
    v2 = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": IRIS[1]}]}
    assert infer.post(f"/v2/models/{name}/versions/1/infer", json=v2).status_code == 200
    assert infer.post("/v1/infer", json={"model": name, "version": "1", "input": {"data": [1]}}).status_code == 400
    assert st.services().capture.flush() == 5


def window() -> dict[str, str]:
    now = datetime.now(UTC)
    return {"since": (now - timedelta(minutes=5)).isoformat(), "until": (now + timedelta(minutes=5)).isoformat()}


def test_replay_of_captured_traffic_on_an_equal_candidate_compares_equal(replay_stack: Stack, triton: Any) -> None:
    st = replay_stack
    st.configure(capture_bucket=f"cap-{uuid.uuid4().hex[:8]}", capture_flush_s=3600)
    name = f"replay-{uuid.uuid4().hex[:8]}"
    register(st.services(), name, "1", "iris_classifier", triton.grpc_url)
    register(st.services(), name, "2", "iris_classifier", triton.grpc_url)
    capture_traffic(st, name)
    job = st.submit({"from_capture": {"model": name, "version": "1", **window()}, "version": "2"})
    assert job["total"] == 4  # the failed request is not replayed
    done = st.wait(job["job_id"])
    assert done["status"] == "completed" and done["version"] == "2"
    comparison = dict(done["comparison"])
    assert comparison.pop("mean_abs_diff") < 1e-6  # batched and single-row float32 answers: rounding only
    assert comparison == {"compared": 4, "equal": 4, "differing": 0, "failed": 0, "skipped": 1, "differences": []}
    assert st.status(job["job_id"])["comparison"] == done["comparison"]  # kept once computed


def test_replay_on_a_different_candidate_counts_differences(replay_stack: Stack, triton: Any) -> None:
    st = replay_stack
    st.configure(capture_bucket=f"cap-{uuid.uuid4().hex[:8]}", capture_flush_s=3600)
    name = f"replay-{uuid.uuid4().hex[:8]}"
    register(st.services(), name, "1", "iris_classifier", triton.grpc_url)
    register(st.services(), name, "2", "vector_scorer", triton.grpc_url)  # takes any {"data": [...]}
    capture_traffic(st, name, "data")
    job = st.submit({"from_capture": {"model": name, **window()}, "version": "2"})
    done = st.wait(job["job_id"])
    comparison = done["comparison"]
    assert comparison["compared"] + comparison["failed"] == 4 and comparison["skipped"] == 1
    assert comparison["differing"] + comparison["failed"] >= 1
    for example in comparison.get("differences", []):  # each named by the captured request it replayed
        assert example["request_id"] and example["captured"] != example["replayed"], example
    assert len(comparison.get("differences", [])) == min(comparison["differing"], 20)


@pytest.mark.parametrize(
    "capture,field",
    [
        ({"model": "m", "since": "yesterday", "until": "2026-01-01T00:00:00Z"}, "from_capture.since"),
        ({"model": "m", "since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "from_capture.since"),
        ({"model": "m", "since": "2026-01-01T00:00:00Z"}, "from_capture.until"),
        ({"model": "m", "since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"}, "from_capture"),
    ],
)
def test_a_bad_or_empty_window_is_400_naming_the_field(replay_stack: Stack, capture: dict, field: str) -> None:
    replay_stack.configure()
    resp = replay_stack.api.post("/v1/batch", json={"from_capture": capture})
    assert resp.status_code == 400 and resp.json()["field"] == field, resp.text
