"""The original platform's clients, unchanged, against the local stack.

Kinfer implements an earlier "AI inference platform" whose own test plan names its scenarios,
its ports and environment variables (API_GATEWAY_URL :8080, MODEL_ROUTER_URL :8081,
ORCHESTRATOR_URL :8082, METADATA_SERVICE_URL :8083) and its payloads: models registered on
``backend_url: http://triton:8001``, real-time ``input.data`` lists, batch ``inputs[].data``.
Each test below is one scenario of that plan, driven the way those clients drive it: plain HTTP,
the dev key ``demo-token``, no Kinfer-only fields. A regression here breaks existing users.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.conftest import http

pytestmark = pytest.mark.e2e

GATEWAY = os.environ.get("API_GATEWAY_URL", "http://localhost:8080")
ROUTER = os.environ.get("MODEL_ROUTER_URL", "http://localhost:8081")
ORCHESTRATOR = os.environ.get("ORCHESTRATOR_URL", "http://localhost:8082")
METADATA = os.environ.get("METADATA_SERVICE_URL", "http://localhost:8083")
KEY = "demo-token"
IRIS = [5.1, 3.5, 1.4, 0.2]
UNREACHABLE = "127.0.0.1:8011"  # the local stack allows it; nothing listens there


def seed_model(**over: Any) -> dict[str, Any]:
    """A registration exactly as the original clients send it (a field given as None is left out)."""
    body = {
        "name": f"test-model-{uuid.uuid4().hex[:8]}",
        "version": "1.0.0",
        "framework": "pytorch",
        "format": "onnx",
        "backend_url": "http://triton:8001",
        "description": "integration test model",
        "status": "active",
        **over,
    }
    return {k: v for k, v in body.items() if v is not None}


REGISTERED: list[str] = []  # deleted when the module ends: each test owns its data


def register(**over: Any) -> dict[str, Any]:
    status, body, _ = http("POST", f"{METADATA}/v1/models", seed_model(**over))
    assert status == 201, body
    REGISTERED.append(body["id"])
    return dict(body)


def infer(model: str, data: Any, key: str = KEY, **headers: str) -> tuple[int, Any, dict[str, str]]:
    return http("POST", f"{GATEWAY}/v1/infer", {"model": model, "input": {"data": data}}, key=key, headers=headers)


def eventually(check: Callable[[], Any], timeout: float = 60.0, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(every)


@pytest.fixture(scope="module", autouse=True)
def running(stack: dict[str, str]) -> Iterator[None]:
    """The stack is up (the e2e fixture starts it); what the tests registered is deleted afterwards."""
    yield
    left = [(i, s) for i in REGISTERED if (s := http("DELETE", f"{METADATA}/v1/models/{i}")[0]) not in (204, 404)]
    assert not left, f"could not delete the models this module registered: {left}"


# -- model registry (METADATA_SERVICE_URL) -------------------------------------------------------------
def test_registry_crud_with_the_triton_backend_name() -> None:
    model = register()
    assert re.fullmatch(r"[0-9a-f-]{36}", model["id"])
    assert (model["backend_url"], model["framework"], model["status"]) == ("http://triton:8001", "pytorch", "active")
    status, fetched, _ = http("GET", f"{METADATA}/v1/models/{model['id']}")
    assert status == 200 and fetched["name"] == model["name"] and fetched["description"] == "integration test model"
    status, updated, _ = http("PUT", f"{METADATA}/v1/models/{model['id']}", {"description": "updated"})
    assert status == 200 and updated["description"] == "updated" and updated["id"] == model["id"]
    # A client that PUTs back the whole object it read, with a change, is understood too.
    status, updated, _ = http("PUT", f"{METADATA}/v1/models/{model['id']}", {**fetched, "status": "deprecated"})
    assert status == 200 and (updated["status"], updated["description"]) == ("deprecated", "integration test model")
    status, body, _ = http("PUT", f"{METADATA}/v1/models/{model['id']}", {**fetched, "version": "2.0.0"})
    assert status == 400 and body["field"] == "version", "a field that cannot change is still refused"
    assert http("DELETE", f"{METADATA}/v1/models/{model['id']}")[0] == 204
    assert http("GET", f"{METADATA}/v1/models/{model['id']}")[0] == 404


def test_registry_get_by_id_and_by_name_and_version() -> None:
    model = register()
    by_id = http("GET", f"{METADATA}/v1/models/{model['id']}")[1]
    status, by_name, _ = http("GET", f"{METADATA}/v1/models/by-name/{model['name']}/1.0.0")
    assert status == 200 and by_name["id"] == by_id["id"] == model["id"]
    assert http("GET", f"{METADATA}/v1/models/by-name/{model['name']}/9.9.9")[0] == 404
    assert http("GET", f"{METADATA}/v1/models/not-a-uuid")[0] == 404


def test_registry_list_with_filters() -> None:
    tag = f"seed-{uuid.uuid4().hex[:8]}"
    torch = register(tags=[tag])
    onnx = register(tags=[tag], framework="onnx", status="inactive")
    status, listed, _ = http("GET", f"{METADATA}/v1/models?tag={tag}")
    assert status == 200 and listed["total"] == 2 and {"limit", "offset"} <= set(listed)
    assert {m["id"] for m in listed["models"]} == {torch["id"], onnx["id"]}
    assert [m["id"] for m in http("GET", f"{METADATA}/v1/models?tag={tag}&framework=onnx")[1]["models"]] == [onnx["id"]]
    assert [m["id"] for m in http("GET", f"{METADATA}/v1/models?tag={tag}&status=active")[1]["models"]] == [torch["id"]]
    assert http("GET", f"{METADATA}/v1/models?name={torch['name']}")[1]["total"] == 1
    assert len(http("GET", f"{METADATA}/v1/models?tag={tag}&limit=1")[1]["models"]) == 1


def test_registry_reads_are_cached_and_never_stale_after_a_write() -> None:
    model = register()
    url = f"{METADATA}/v1/models/{model['id']}"
    first, second = http("GET", url)[1], http("GET", url)[1]
    assert first == second
    for n in range(3):
        http("PATCH", url, {"description": f"write {n}"})
        assert http("GET", url)[1]["description"] == f"write {n}"


def test_registry_validation() -> None:
    missing = seed_model()
    del missing["name"]
    status, body, _ = http("POST", f"{METADATA}/v1/models", missing)
    assert status == 400 and body["field"] == "name" and body["error"] and body["request_id"]
    status, body, _ = http("POST", f"{METADATA}/v1/models", seed_model(framework="caffe"))
    assert status == 400 and body["field"] == "framework"
    status, body, _ = http("POST", f"{METADATA}/v1/models", seed_model(version="v-one"))
    assert status == 400 and body["field"] == "version"
    model = register()
    status, body, _ = http("POST", f"{METADATA}/v1/models", seed_model(name=model["name"]))
    assert status == 409, body
    status, body, _ = http("POST", f"{METADATA}/v1/models", seed_model(backend_url="http://10.1.2.3:6379"))
    assert status == 400 and body["code"] == "backend_not_allowed", "other hosts stay refused"


# -- real-time inference (API_GATEWAY_URL) --------------------------------------------------------------
def test_realtime_success_through_a_model_registered_on_triton() -> None:
    model = register(framework="onnx", triton_model="iris_classifier")
    status, body, headers = infer(model["name"], IRIS)
    assert status == 200, body
    assert body["model"] == model["name"] and body["version"] == "1.0.0" and body["prediction"] == "setosa"
    assert body["latency_ms"] > 0 and body["request_id"] == headers["X-Request-ID"] and body["timestamp"]


def test_realtime_model_not_found() -> None:
    status, body, _ = infer(f"no-such-model-{uuid.uuid4().hex[:6]}", IRIS)
    assert status == 404 and body["code"] == "not_found" and body["request_id"]


def test_realtime_invalid_input() -> None:
    status, body, _ = http("POST", f"{GATEWAY}/v1/infer", {"model": "iris_classifier"}, key=KEY)
    assert status == 400 and body["field"] == "input"
    for bad in ([], ["a", "b", "c", "d"], [1.0, 2.0]):
        status, body, _ = infer("iris_classifier", bad)
        assert status == 400 and body["field"].startswith("input"), (bad, body)


def test_realtime_tracing_headers() -> None:
    trace = uuid.uuid4().hex
    status, body, headers = infer(
        "iris_classifier", IRIS, **{"X-Request-ID": "seed-req-1", "traceparent": f"00-{trace}-{'1' * 16}-01"}
    )
    assert status == 200 and headers["X-Request-ID"] == "seed-req-1" == body["request_id"]
    assert headers["X-Trace-ID"] == trace


def test_realtime_concurrent_requests() -> None:
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: infer("iris_classifier", IRIS), range(40)))
    ok = [a for a in answers if a[0] == 200]
    assert len(ok) / len(answers) > 0.95, [a[:2] for a in answers if a[0] != 200][:3]
    assert {a[1]["prediction"] for a in ok} == {"setosa"}
    assert len({a[1]["request_id"] for a in ok}) == len(ok)


# -- batch processing ---------------------------------------------------------------------------------
def submit(inputs: list[dict[str, Any]], model: str = "iris_classifier") -> str:
    status, body, _ = http("POST", f"{GATEWAY}/v1/batch", {"model": model, "inputs": inputs}, key=KEY)
    assert status == 202 and body["status"] in ("pending", "processing") and body["total"] == len(inputs), body
    return str(body["job_id"])


def job(job_id: str) -> dict[str, Any]:
    status, body, _ = http("GET", f"{GATEWAY}/v1/batch/{job_id}", key=KEY)
    assert status == 200, body
    return dict(body)


def finished(job_id: str) -> dict[str, Any]:
    done = eventually(lambda: (j := job(job_id))["status"] in ("completed", "failed", "cancelled") and j)
    assert done, job(job_id)
    return dict(done)


def test_batch_complete_workflow_with_progress_and_result_url() -> None:
    job_id = submit([{"data": IRIS} for _ in range(10)])
    seen: list[float] = []
    done = eventually(lambda: (seen.append((j := job(job_id))["progress"]) or j["status"] == "completed") and j)
    assert done, job(job_id)
    assert seen == sorted(seen) and 0.0 <= seen[0] and done["progress"] == 1.0
    assert (done["total"], done["completed"], done["succeeded"], done["failed"]) == (10, 10, 10, 0)
    with urllib.request.urlopen(done["result_url"], timeout=10) as resp:  # presigned: no key
        lines = resp.read().decode().splitlines()
    assert len(lines) == 10 and all('"prediction":"setosa"' in line.replace(" ", "") for line in lines)


def test_batch_partial_failure() -> None:
    done = finished(submit([{"data": IRIS}, {"data": [1.0]}, {"data": IRIS}]))
    assert done["status"] == "completed" and (done["succeeded"], done["failed"]) == (2, 1)
    assert done["errors"] and done["errors"][0]["index"] == 1 and done["errors"][0]["error"]


def test_batch_cancellation() -> None:
    stuck = register(name=f"test-stuck-{uuid.uuid4().hex[:6]}", backend_url=UNREACHABLE, triton_model="iris_classifier")
    job_id = submit([{"data": IRIS} for _ in range(5)], model=stuck["name"])
    status, body, _ = http("DELETE", f"{GATEWAY}/v1/batch/{job_id}", key=KEY)
    assert status == 200 and body["status"] == "cancelled", body
    assert job(job_id)["status"] == "cancelled"
    assert http("DELETE", f"{GATEWAY}/v1/batch/{job_id}", key=KEY)[0] == 409
    assert http("GET", f"{GATEWAY}/v1/batch/{uuid.uuid4()}", key=KEY)[0] == 404


# -- circuit breaker (MODEL_ROUTER_URL) --------------------------------------------------------------------
def backend(url: str) -> dict[str, Any] | None:
    body = http("GET", f"{ROUTER}/health")[1]
    return next((b for b in body["backends"] if b["url"] == url), None)


def test_circuit_breaker_trips_then_half_opens() -> None:
    dead = register(backend_url=UNREACHABLE, triton_model="iris_classifier")
    answers = [infer(dead["name"], IRIS) for _ in range(8)]
    assert {a[0] for a in answers} <= {502, 503}, [a[:2] for a in answers]
    status, body, headers = answers[-1]
    assert status == 503 and body["code"] == "circuit_open" and "circuit breaker" in body["error"]
    assert int(headers["Retry-After"]) >= 1
    assert eventually(lambda: (b := backend(UNREACHABLE)) and b["circuit"] == "open"), backend(UNREACHABLE)
    # After the reset timeout one trial request goes to the backend again (half-open): it fails as
    # the backend's own failure, not as the open circuit, and the circuit opens again.
    retry_after = int(headers["Retry-After"])
    time.sleep(retry_after + 0.5)
    trial = eventually(lambda: (a := infer(dead["name"], IRIS))[1]["code"] != "circuit_open" and a, timeout=40)
    assert trial and trial[0] in (502, 503) and trial[1]["code"] != "circuit_open", trial
    assert infer(dead["name"], IRIS)[1]["code"] == "circuit_open"
    assert infer("iris_classifier", IRIS)[0] == 200, "another backend's models are not affected"


def test_backend_health_tracking_and_metrics() -> None:
    status, body, _ = http("GET", f"{ROUTER}/health")
    assert status == 200 and body["status"] in ("healthy", "degraded")
    triton = backend("127.0.0.1:8001")
    assert triton and triton["healthy"] and triton["circuit"] == "closed"
    before = metric(r'kinfer_backend_requests_total\{backend="127.0.0.1:8001",outcome="success"\}')
    for _ in range(5):
        assert infer("iris_classifier", IRIS)[0] == 200
    assert eventually(
        lambda: metric(r'kinfer_backend_requests_total\{backend="127.0.0.1:8001",outcome="success"\}') > before,
        timeout=30,
    ), "the request counter moves"
    text = metrics_text()
    for name in ("kinfer_circuit_state", "kinfer_backend_healthy", "kinfer_model_requests_total"):
        assert f"# TYPE {name} " in text, name


def metrics_text() -> str:
    with urllib.request.urlopen(f"{ROUTER}/metrics", timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        return resp.read().decode()


def metric(pattern: str) -> float:
    found = re.search(pattern + r" ([0-9.e+]+)", metrics_text())
    return float(found.group(1)) if found else 0.0


def test_load_balancing_over_replicas_survives_a_dead_one() -> None:
    model = register(
        framework="onnx",
        triton_model="iris_classifier",
        backend_url=None,
        backend_urls=["http://triton:8001", UNREACHABLE],
    )
    answers = [infer(model["name"], IRIS)[0] for _ in range(20)]
    assert answers.count(200) == 20, answers
    assert backend(UNREACHABLE), "both replicas are tracked"


# -- full pipeline (e2e) -----------------------------------------------------------------------------------
def test_every_service_is_healthy_on_its_seed_port() -> None:
    for url in (GATEWAY, ROUTER, ORCHESTRATOR, METADATA):
        status, body, _ = http("GET", f"{url}/health")
        assert status == 200 and body["status"] in ("healthy", "degraded"), (url, body)


def test_full_pipeline_register_infer_batch_monitor() -> None:
    model = register(framework="onnx", triton_model="iris_classifier")
    assert infer(model["name"], IRIS)[1]["prediction"] == "setosa"
    assert (
        http(
            "POST",
            f"{ORCHESTRATOR}/v1/infer",
            {"model": model["name"], "input": {"data": IRIS}},
            headers={"X-API-Key": KEY},
        )[0]
        == 200
    )
    done = finished(submit([{"data": IRIS}, {"data": [6.7, 3.0, 5.2, 2.3]}], model=model["name"]))
    assert done["status"] == "completed" and done["succeeded"] == 2
    assert eventually(lambda: f'model="{model["name"]}"' in metrics_text(), timeout=30), "monitored per model"
    with ThreadPoolExecutor(10) as pool:  # resilience under load: >90 % in the plan, all of them here
        codes = list(pool.map(lambda _: infer(model["name"], IRIS)[0], range(50)))
    assert codes.count(200) / len(codes) > 0.9, codes
