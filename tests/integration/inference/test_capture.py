"""Payload capture on the real Triton, PostgreSQL, Redis and S3 server, through the models and infer
functions: the settings API (admin writes, audit-logged; any key reads), 100 % capture writes every
request (v1, v2 and failed ones) with its inputs redacted, 0 % writes none, and S3 down leaves every
answer unchanged while the dropped records are counted."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared import telemetry
from shared.clients.storage import ensure_buckets
from shared.localstack.s3 import S3Server
from shared.services import Services, reset_services
from shared.settings import Settings
from tests.conftest import free_port, function_client
from tests.integration.inference.test_dataplane import IRIS_ROW, VIRGINICA_ROW, register

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server(port=free_port())
    server.start()
    yield server
    server.stop()


def _services(base_settings: Settings, triton: Any, s3_url: str) -> Services:
    settings = dataclasses.replace(
        base_settings,
        triton_url=triton.grpc_url,
        auth_required=True,
        auth_cache_ttl_s=0,
        s3_endpoint_url=s3_url,
        capture_bucket=f"capture-{uuid.uuid4().hex[:8]}",
        capture_flush_s=3600,  # the tests flush themselves
    )
    return reset_services(settings)  # type: ignore[return-value]


@pytest.fixture
def svc(base_settings: Settings, triton: Any, s3: S3Server) -> Iterator[Services]:
    yield _services(base_settings, triton, s3.url)
    reset_services(None)


@pytest.fixture
def keys(svc: Services) -> dict[str, dict[str, str]]:
    uid = uuid.uuid4().hex[:8]
    found = {}
    for scope in ("admin", "infer"):
        _, secret = svc.keys.create_key(f"capture-{scope}-{uid}", scope)
        found[scope] = {"Authorization": f"Bearer {secret}"}
    return found


@pytest.fixture(scope="module")
def models() -> Any:
    return function_client("models", "manage_models")


@pytest.fixture(scope="module")
def infer() -> Any:
    return function_client("infer", "run_inference")


@pytest.fixture
def iris(svc: Services, triton: Any) -> dict[str, Any]:
    return dict(register(svc, "iris_classifier", [triton.grpc_url]))


def captured(svc: Services, name: str) -> list[dict[str, Any]]:
    """Every record written under capture/<name>/ (after a flush)."""
    svc.capture.flush()
    bucket = svc.settings.capture_bucket
    ensure_buckets(svc.s3, bucket)  # nothing written yet: no bucket yet
    listing = svc.s3.list_objects_v2(Bucket=bucket, Prefix=f"capture/{name}/").get("Contents", [])
    rows = []
    for item in listing:
        body = svc.s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        rows += [json.loads(line) for line in body.splitlines()]
    return rows


def counter(name: str, **labels: str) -> float:
    return telemetry.metrics().registry.get_sample_value(name, labels) or 0.0


def test_settings_are_written_by_admins_read_by_any_key_and_audit_logged(svc, keys, models, iris):
    path = f"/v1/models/by-name/{iris['name']}/capture"
    body = {"sample_percent": 25, "redact": ["features"]}
    assert models.put(path, json=body, headers=keys["infer"]).status_code == 403
    bad = models.put(path, json={"sample_percent": 250}, headers=keys["admin"])
    assert bad.status_code == 400 and bad.json()["field"] == "sample_percent"
    unknown = models.put(f"/v1/models/by-name/nosuch-{uuid.uuid4().hex[:6]}/capture", json=body, headers=keys["admin"])
    assert unknown.status_code == 404 and "kinfer models list" in unknown.json()["error"]
    put = models.put(path, json=body, headers=keys["admin"])
    assert put.status_code == 200, put.text
    assert put.json()["sample_percent"] == 25 and put.json()["redact"] == ["features"] and put.json()["alias"] is None
    nowhere = models.put(path, json={"sample_percent": 100, "alias": "canary"}, headers=keys["admin"])
    assert nowhere.status_code == 404 and nowhere.json()["field"] == "alias", "a typo would capture nothing"
    svc.aliases.put_alias(iris["name"], "canary", {"version": iris["version"]})
    canary = models.put(path, json={"sample_percent": 100, "alias": "canary"}, headers=keys["admin"])
    assert canary.status_code == 200 and canary.json()["alias"] == "canary"
    got = models.get(path, headers=keys["infer"])
    assert got.status_code == 200 and got.json()["sample_percent"] == 25
    listed = models.get("/v1/capture", params={"model": iris["name"]}, headers=keys["infer"])
    assert [(s["alias"], s["sample_percent"]) for s in listed.json()["settings"]] == [(None, 25), ("canary", 100)]
    assert models.delete(path, params={"alias": "canary"}, headers=keys["infer"]).status_code == 403
    assert models.delete(path, params={"alias": "canary"}, headers=keys["admin"]).status_code == 204
    missing = models.get(path, params={"alias": "canary"}, headers=keys["infer"])
    assert missing.status_code == 404 and "kinfer capture set" in missing.json()["error"]
    entries = svc.audit.list_page({"model": iris["name"]})["entries"]
    capture_entries = [(e["action"], e["target"]) for e in entries if e["action"].startswith("capture.")]
    assert capture_entries == [
        ("capture.delete", f"capture:{iris['name']}/canary"),
        ("capture.set", f"capture:{iris['name']}/canary"),
        ("capture.set", f"capture:{iris['name']}"),
    ]
    assert entries[0]["before"]["sample_percent"] == 100 and entries[0]["after"] is None


def test_full_capture_writes_every_request_with_inputs_redacted(svc, keys, models, infer, iris):
    name = iris["name"]
    setting = {"sample_percent": 100, "redact": ["features"]}
    assert models.put(f"/v1/models/by-name/{name}/capture", json=setting, headers=keys["admin"]).status_code == 200
    ids = []
    for row in (IRIS_ROW, VIRGINICA_ROW, IRIS_ROW):
        r = infer.post("/v1/infer", json={"model": name, "input": {"features": row}}, headers=keys["infer"])
        assert r.status_code == 200, r.text
        ids.append(r.headers["X-Request-ID"])
    v2 = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": VIRGINICA_ROW}]}
    r = infer.post(f"/v2/models/{name}/infer", json=v2, headers=keys["infer"])
    assert r.status_code == 200, r.text
    ids.append(r.headers["X-Request-ID"])
    bad = infer.post("/v1/infer", json={"model": name, "input": {"features": [1, 2]}}, headers=keys["infer"])
    assert bad.status_code == 400
    ids.append(bad.headers["X-Request-ID"])
    rows = captured(svc, name)
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    by_id = {r["request_id"]: r for r in rows}
    first = by_id[ids[0]]
    assert first["input"] == {"features": "[redacted]"} and first["prediction"] == "setosa"
    assert first["version"] == "1" and first["outcome"] == "ok" and first["key_id"] and first["trace_id"]
    assert by_id[ids[3]]["protocol"] == "v2" and by_id[ids[3]]["input"][0]["data"] == "[redacted]"
    assert (by_id[ids[4]]["outcome"], by_id[ids[4]]["status"]) == ("invalid_input", 400)
    assert "outputs" not in by_id[ids[4]]


def test_the_data_shorthand_and_kserve_v1_instances_are_redacted_too(svc, keys, models, infer, iris):
    """The trial's finding: ``{"data": [...]}`` and ``:predict`` instances reached S3 in clear under a rule
    redacting the model's only input."""
    name = iris["name"]
    setting = {"sample_percent": 100, "redact": ["features"]}
    assert models.put(f"/v1/models/by-name/{name}/capture", json=setting, headers=keys["admin"]).status_code == 200
    shorthand = infer.post("/v1/infer", json={"model": name, "input": {"data": IRIS_ROW}}, headers=keys["infer"])
    assert shorthand.status_code == 200, shorthand.text
    predict = models.post(f"/v1/models/{name}:predict", json={"instances": [VIRGINICA_ROW]}, headers=keys["infer"])
    assert predict.status_code == 200, predict.text
    by_id = {r["request_id"]: r for r in captured(svc, name)}
    for answered in (shorthand, predict):
        record = by_id[answered.headers["X-Request-ID"]]
        assert record["input"] == {"data": "[redacted]"}, record


def test_a_new_rate_without_redact_keeps_the_fields_redacted(svc, keys, models, iris):
    path = f"/v1/models/by-name/{iris['name']}/capture"
    first = models.put(path, json={"sample_percent": 100, "redact": ["features"]}, headers=keys["admin"])
    assert first.status_code == 200, first.text
    kept = models.put(path, json={"sample_percent": 10}, headers=keys["admin"])
    assert kept.status_code == 200 and kept.json()["redact"] == ["features"], kept.text
    cleared = models.put(path, json={"sample_percent": 10, "redact": []}, headers=keys["admin"])
    assert cleared.status_code == 200 and cleared.json()["redact"] == [], cleared.text


def test_zero_percent_writes_nothing(svc, keys, models, infer, iris):
    name = iris["name"]
    assert models.put(f"/v1/models/by-name/{name}/capture", json={"sample_percent": 0}, headers=keys["admin"])
    for _ in range(5):
        r = infer.post("/v1/infer", json={"model": name, "input": {"features": IRIS_ROW}}, headers=keys["infer"])
        assert r.status_code == 200
    assert captured(svc, name) == []


def test_s3_down_leaves_answers_unchanged_and_counts_the_drops(base_settings, triton, keys, models, infer):
    down = _services(base_settings, triton, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        _, admin = down.keys.create_key(f"capture-down-{uuid.uuid4().hex[:6]}", "admin")
        headers = {"Authorization": f"Bearer {admin}"}
        iris = register(down, "iris_classifier", [triton.grpc_url])
        path = f"/v1/models/by-name/{iris['name']}/capture"
        assert models.put(path, json={"sample_percent": 100}, headers=headers).status_code == 200
        before = counter("kinfer_capture_dropped_total", reason="write_failed")
        answers = []
        for row in (IRIS_ROW, VIRGINICA_ROW):
            r = infer.post("/v1/infer", json={"model": iris["name"], "input": {"features": row}}, headers=headers)
            assert r.status_code == 200, r.text
            answers.append(r.json()["prediction"])
        assert answers == ["setosa", "virginica"]
        assert down.capture.flush() == 0
        assert counter("kinfer_capture_dropped_total", reason="write_failed") == before + 2
    finally:
        reset_services(None)


def test_a_stalled_s3_fills_the_queue_and_drops_while_answers_go_on(base_settings, triton, models, infer, tmp_path):
    """S3 that accepts connections and never answers (SIGSTOP): the writer hangs in its PUT, the bounded queue
    fills, later records are dropped and counted, and every request is still answered."""
    import os
    import signal

    stalled = S3Server(port=free_port())
    pid = stalled.spawn(tmp_path / "s3.log")
    try:
        svc = _services(base_settings, triton, stalled.url)
        svc = reset_services(dataclasses.replace(svc.settings, capture_batch_max=1, capture_queue_max=2))
        _, admin = svc.keys.create_key(f"capture-stall-{uuid.uuid4().hex[:6]}", "admin")
        headers = {"Authorization": f"Bearer {admin}"}
        iris = register(svc, "iris_classifier", [triton.grpc_url])
        path = f"/v1/models/by-name/{iris['name']}/capture"
        assert models.put(path, json={"sample_percent": 100}, headers=headers).status_code == 200
        os.kill(pid, signal.SIGSTOP)
        before = counter("kinfer_capture_dropped_total", reason="queue_full")
        for _ in range(8):
            r = infer.post("/v1/infer", json={"model": iris["name"], "input": {"features": IRIS_ROW}}, headers=headers)
            assert r.status_code == 200 and r.json()["prediction"] == "setosa", r.text
        # one record in the hung PUT at most, two queued: the rest dropped
        assert counter("kinfer_capture_dropped_total", reason="queue_full") >= before + 5
        assert svc.capture.pending() <= 2
    finally:
        os.kill(pid, signal.SIGCONT)
        reset_services(None)  # the writer's PUT completes, what is queued is written
        os.kill(pid, signal.SIGTERM)


def test_the_writer_process_stores_objects_in_order_and_a_dead_one_is_replaced(base_settings, s3):
    """The S3 calls run in a child process: objects land byte for byte, the S3 secret is neither on its command
    line nor in its environment, the next object after the child is killed starts another, and S3 down is
    reported with the child's reason (the writer counts the batch as dropped)."""
    import os
    import signal

    from shared.clients.storage import get_bytes, make_s3_client
    from shared.inference.capture import WriterFailed, WriterProcess

    settings = dataclasses.replace(base_settings, s3_endpoint_url=s3.url, s3_secret_access_key="never-in-proc-x9")
    bucket = f"writer-{uuid.uuid4().hex[:8]}"
    writer = WriterProcess(settings)
    try:
        writer.warm()
        assert writer._proc is not None
        first = writer._proc.pid
        for name in ("cmdline", "environ"):
            with open(f"/proc/{first}/{name}", "rb") as f:
                assert b"never-in-proc-x9" not in f.read(), name
        for i in range(3):
            writer(bucket, f"o/{i}.jsonl", f"line {i}\n".encode() * 1000, "application/x-ndjson")
        client = make_s3_client(settings)
        assert [get_bytes(client, bucket, f"o/{i}.jsonl") for i in range(3)] == [
            f"line {i}\n".encode() * 1000 for i in range(3)
        ]

        os.kill(first, signal.SIGKILL)
        writer._proc.wait()
        writer(bucket, "o/after.jsonl", b"after\n", "application/x-ndjson")  # a new child takes it
        assert writer._proc is not None and writer._proc.pid != first
        assert get_bytes(client, bucket, "o/after.jsonl") == b"after\n"
    finally:
        writer.close()
    assert writer._proc is None

    down = WriterProcess(dataclasses.replace(settings, s3_endpoint_url=f"http://127.0.0.1:{free_port()}"))
    try:
        with pytest.raises(WriterFailed, match="unreachable"):
            down(bucket, "o/down.jsonl", b"x\n", "application/x-ndjson")
    finally:
        down.close()
