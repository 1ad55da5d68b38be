"""Batch inference end to end on real services: PostgreSQL, Redis, a moto S3 server, the event
relay (Redis Streams) and Triton. The worker and dead-letter functions are served over real HTTP
for the relay; the batch API and intake run under functions-framework's test client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from shared.batch import store as batch_store
from shared.clients import storage
from shared.localstack.relay.server import EventRelay
from shared.localstack.relay.wiring import Delivery, Subscription, Wiring
from shared.localstack.s3 import S3Server
from shared.services import reset_services
from tests.conftest import ROOT, free_port, function_client
from tests.integration.servers import InProcessServer, settings_env

pytestmark = pytest.mark.integration
IRIS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
CLASSES = {"setosa", "versicolor", "virginica"}
SINK = "batch-chunks"


def iris_inputs(n: int) -> list[dict[str, Any]]:
    return [{"data": IRIS[i % 3]} for i in range(n)]


# -- servers --------------------------------------------------------------------


class Stack:
    """Everything a batch job touches; ``configure`` swaps the process settings between tests."""

    def __init__(self, base: Any, triton: Any, tmp: Path) -> None:
        self.uid = uuid.uuid4().hex[:8]
        self.s3 = S3Server(port=free_port())
        self.s3.start()
        self.tmp, self.triton = tmp, triton
        self.base = base
        self.redis = redis.Redis.from_url(base.redis_url, socket_timeout=10)
        self.worker = InProcessServer("batch_worker", "process_batch_chunk")
        self.dead = InProcessServer("batch_deadletter", "fail_dead_chunk")
        self.relay = self.make_relay(self.worker.url, retry=3, delay=0.05)
        self.settings = self.configure()
        self.api = function_client("batch", "manage_batch_jobs")
        self.intake = function_client("batch_intake", "intake_batch_request")

    def make_relay(self, worker_url: str, *, retry: int, delay: float, idle: float = 30.0) -> EventRelay:
        topic = f"kinfer.batch.chunks.{uuid.uuid4().hex[:8]}"
        sub = Subscription(
            name="batch-worker-source",
            namespace="kinfer",
            topics=(topic,),
            group="kinfer-batch-worker",
            sink=worker_url,
            delivery=Delivery(retry=retry, backoff_delay_s=delay, dead_letter=self.dead.url),
            initial_offset="earliest",
            ordering="unordered",
        )  # as knative/ wires the worker
        relay = EventRelay(
            self.redis,
            Wiring(sinks={SINK: topic}, subscriptions=(sub,)),
            port=free_port(),
            key_prefix=f"kinfer:test:batch:{self.uid}:",
            idle_timeout_s=idle,
            workers=8,
        )
        relay.start()
        return relay

    def configure(self, **overrides: Any) -> Any:
        values = {
            "s3_endpoint_url": self.s3.url,
            "k_sink": self.relay.sink_url(SINK),
            "batch_chunk_size": 10,
            "result_url_expiry_s": 900,
            "breaker_reset_timeout_s": 1.0,
            "s3_input_bucket": f"in-{self.uid}",
            "s3_results_bucket": f"out-{self.uid}",
        }
        values.update(overrides)
        self.settings = type(self.base).from_env(environ={}, **{**_fields(self.base), **values})
        reset_services(self.settings)
        return self.settings

    def services(self) -> Any:
        from shared.services import get_services

        return get_services()

    def submit(self, body: dict[str, Any], status: int = 202) -> dict[str, Any]:
        resp = self.api.post("/v1/batch", json=body)
        assert resp.status_code == status, resp.text
        return resp.json()

    def status(self, job_id: str) -> dict[str, Any]:
        resp = self.api.get(f"/v1/batch/{job_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait(self, job_id: str, timeout: float = 60, until: tuple[str, ...] = batch_store.FINISHED) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.status(job_id)
            if body["status"] in until:
                return body
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still {body['status']} after {timeout}s: {body}")

    def stop(self) -> None:
        self.relay.stop()
        self.worker.stop()
        self.dead.stop()
        reset_services(None)
        self.s3.stop()
        for key in self.redis.scan_iter(f"kinfer:test:batch:{self.uid}:*"):
            self.redis.delete(key)


def _fields(settings: Any) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(settings, f.name) for f in fields(settings)}


def register_model(services: Any, name: str, backend: str, triton_model: str = "iris_classifier") -> dict:

    return services.registry.create_model(
        {
            "name": name,
            "version": "1",
            "framework": "onnx",
            "format": "onnx",
            "backend_url": backend,
            "triton_model": triton_model,
        },
    )


@pytest.fixture(scope="module")
def stack(base_settings: Any, triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(base_settings, triton, tmp_path_factory.mktemp("batch"))
    s.model = register_model(s.services(), f"iris-{s.uid}", triton.grpc_url)["name"]
    yield s
    s.stop()


@pytest.fixture
def st(stack: Stack) -> Stack:
    stack.configure()
    return stack


def results_of(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=10) as resp:  # no credentials: the URL is presigned
        return [json.loads(line) for line in resp.read().decode().splitlines()]


# -- the HTTP API -----------------------------------------------------------------
def test_three_item_job_completes_with_presigned_results(st: Stack) -> None:
    job = st.submit({"model": st.model, "inputs": iris_inputs(3)})
    assert job["status"] == "pending" and job["total"] == 3 and uuid.UUID(job["job_id"])
    done = st.wait(job["job_id"])
    assert (done["status"], done["progress"], done["completed"], done["succeeded"], done["failed"]) == (
        "completed",
        1.0,
        3,
        3,
        0,
    )
    assert done["model"] == st.model and done["version"] == "1" and done["finished_at"] and done["started_at"]
    query = parse_qs(urlsplit(done["result_url"]).query)
    assert query["X-Amz-Expires"] == ["900"] and "X-Amz-Signature" in query
    lines = results_of(done["result_url"])
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert [line["prediction"] for line in lines] == ["setosa", "virginica", "versicolor"]
    assert all(set(line["outputs"]) >= {"label", "probabilities"} for line in lines)


def test_progress_only_grows_and_reaches_one(st: Stack) -> None:
    st.configure(batch_chunk_size=3)
    job = st.submit({"model": st.model, "inputs": iris_inputs(25)})
    seen = []
    while True:
        body = st.status(job["job_id"])
        seen.append(body["progress"])
        assert body["completed"] == body["succeeded"] + body["failed"]
        if body["status"] in batch_store.FINISHED:
            break
        time.sleep(0.01)
    assert seen == sorted(seen) and seen[-1] == 1.0 and body["status"] == "completed"
    assert body["completed"] == 25 and len(results_of(body["result_url"])) == 25


def test_empty_item_fails_alone(st: Stack) -> None:
    inputs = [{"data": IRIS[0]}, {"data": []}, {"data": IRIS[1]}, {}, {"data": ["x", 1, 2, 3]}]
    done = st.wait(st.submit({"model": st.model, "inputs": inputs})["job_id"])
    assert (done["status"], done["total"], done["completed"], done["succeeded"], done["failed"]) == (
        "completed",
        5,
        5,
        2,
        3,
    )
    lines = results_of(done["result_url"])
    assert [("error" in line) for line in lines] == [False, True, False, True, True]
    assert "features" in lines[1]["error"]  # says what was expected
    assert {e["index"] for e in done["errors"]} == {1, 3, 4}


def test_all_items_failing_ends_failed(st: Stack) -> None:
    done = st.wait(st.submit({"model": st.model, "inputs": [{"data": []}, {"nope": [1]}]})["job_id"])
    assert (done["status"], done["failed"], done["succeeded"]) == ("failed", 2, 0)
    assert len(results_of(done["result_url"])) == 2


@pytest.mark.parametrize(
    "body,status",
    [
        ({"model": "no-such-model", "inputs": [{"data": IRIS[0]}]}, 404),
        ({"inputs": [{"data": IRIS[0]}]}, 400),
        ({"model": "m", "inputs": []}, 400),
        ({"model": "m", "inputs": {"data": IRIS[0]}}, 400),
        ({"model": "m", "inputs": "x"}, 400),
        ({"model": "m", "input_url": "https://example.com/x.jsonl"}, 400),
        ({"model": "m", "inputs": [{}], "extra": 1}, 400),
    ],
)
def test_submit_rejections(st: Stack, body: dict, status: int) -> None:
    assert st.submit(body, status=status)["code"] in {"not_found", "invalid_input"}


def test_submit_limits(st: Stack) -> None:
    st.configure(batch_max_items=5)
    assert "limit is 5" in st.submit({"model": st.model, "inputs": iris_inputs(6)}, 400)["error"]
    st.configure(max_body_bytes=2048)
    assert st.submit({"model": st.model, "inputs": iris_inputs(200)}, 413)["code"] == "payload_too_large"


def test_inactive_model_is_404(st: Stack) -> None:

    model = register_model(st.services(), f"off-{st.uid}", st.triton.grpc_url)
    st.services().registry.update_model(model["id"], {"status": "inactive"})
    assert st.submit({"model": model["name"], "inputs": iris_inputs(1)}, 404)["code"] == "no_active_version"


def upload(st: Stack, data: bytes, headers: dict[str, str] | None = None, filename: str = "in.jsonl") -> str:
    """Upload ``data`` the way a user does (POST /v1/batch/uploads, then PUT); returns its input_url."""
    import requests

    resp = st.api.post("/v1/batch/uploads", json={"filename": filename, "size": len(data)}, headers=headers or {})
    assert resp.status_code == 201, resp.text
    grant = resp.json()
    assert grant["input_url"].startswith(grant["prefix"]) and grant["method"] == "PUT"
    put = requests.put(grant["upload_url"], data=data, headers=grant["headers"], timeout=30)
    assert put.status_code == 200, put.text
    return grant["input_url"]


def test_input_url_job_streams_jsonl(st: Stack) -> None:
    lines = b"\n".join(json.dumps(i).encode() for i in iris_inputs(23)) + b"\n\nnot json\n"
    input_url = upload(st, lines)
    job = st.submit({"model": st.model, "input_url": input_url})
    assert job["total"] == 24
    done = st.wait(job["job_id"])
    assert (done["succeeded"], done["failed"]) == (23, 1)
    assert "not valid JSON" in results_of(done["result_url"])[23]["error"]
    missing = input_url.rsplit("/", 1)[0] + "/missing.jsonl"
    assert st.submit({"model": st.model, "input_url": missing}, 404)["code"] == "not_found"


def test_upload_grants_are_signed_for_a_bounded_size(st: Stack) -> None:
    """The presigned PUT had no size bound (issue 20): now ``size`` is required, at most
    BATCH_MAX_INPUT_BYTES, and signed into the URL as Content-Length."""
    from urllib.parse import parse_qs, urlsplit

    st.configure(batch_max_input_bytes=4096)
    for body in ({}, {"size": 0}, {"size": 4097}, {"size": True}, {"size": "10"}):
        resp = st.api.post("/v1/batch/uploads", json=body)
        assert resp.status_code == 400 and resp.json()["field"] == "size", (body, resp.text)
        assert "BATCH_MAX_INPUT_BYTES" in resp.json()["error"]
    grant = st.api.post("/v1/batch/uploads", json={"size": 4096}).json()
    assert grant["headers"]["Content-Length"] == "4096"
    signed = parse_qs(urlsplit(grant["upload_url"]).query)["X-Amz-SignedHeaders"][0].split(";")
    assert {"content-length", "content-type", "host"} <= set(signed)


def test_input_url_with_a_line_over_the_bound_is_refused_naming_it(st: Stack) -> None:
    """A 24 MiB line (the probe: 384 MiB, 76 s of gateway CPU, botocore's iter_lines re-joining the pending
    bytes per chunk): the job is refused at once with 400 naming the line and BATCH_MAX_LINE_BYTES, read no
    further than the bound, and no job or chunk object is left behind."""
    st.configure(batch_max_line_bytes=1024 * 1024)
    good = json.dumps(iris_inputs(1)[0]).encode()
    huge = b'{"data": [' + b"1.0, " * (24 * 1024**2 // 5) + b"1.0]}"
    input_url = upload(st, good + b"\n\n" + huge + b"\n" + good + b"\n")
    before = st.api.get("/v1/batch").json()["total_count"]
    started = time.monotonic()
    body = st.submit({"model": st.model, "input_url": input_url}, 400)
    elapsed = time.monotonic() - started
    assert body["field"] == "input_url", body
    assert "line 3 of input_url is longer than 1048576 bytes" in body["error"], body
    assert "BATCH_MAX_LINE_BYTES" in body["error"], body
    assert st.api.get("/v1/batch").json()["total_count"] == before
    assert elapsed < 5, elapsed
    print(f"\n24 MiB line refused in {elapsed:.2f}s")


def test_input_url_over_the_size_bound_is_refused_before_reading(st: Stack) -> None:
    """An object over BATCH_MAX_INPUT_BYTES under the caller's prefix (written past a grant: an S3 server that
    checks no signature, or the bound lowered since) is refused from its length, before it is read."""
    st.configure(batch_max_input_bytes=4096)
    line = json.dumps(iris_inputs(1)[0]).encode() + b"\n"
    input_url = upload(st, line)
    bucket, key = storage.parse_s3_url(input_url)
    storage.put_bytes(st.services().s3, bucket, key, line * (5000 // len(line)))
    body = st.submit({"model": st.model, "input_url": input_url}, 400)
    assert "the limit is 4096 (BATCH_MAX_INPUT_BYTES)" in body["error"] and body["field"] == "input_url", body
    job = st.submit({"model": st.model, "input_url": upload(st, line * 3)})
    assert job["total"] == 3 and st.wait(job["job_id"])["succeeded"] == 3


def test_input_url_is_confined_to_the_callers_upload_prefix(st: Stack) -> None:
    """Key A must not read B's uploads or B's chunk objects, nor learn whether they exist."""
    st.configure(auth_required=True)
    _, alice = st.services().keys.create_key(f"alice-{st.uid}", "batch")
    _, bob = st.services().keys.create_key(f"bob-{st.uid}", "batch")
    as_alice, as_bob = {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}
    bobs_url = upload(st, b"\n".join(json.dumps(i).encode() for i in iris_inputs(3)), as_bob)
    bobs_job = st.api.post("/v1/batch", json={"model": st.model, "input_url": bobs_url}, headers=as_bob)
    assert bobs_job.status_code == 202
    bucket = st.settings.s3_input_bucket
    job_id = bobs_job.json()["job_id"]
    alices_prefix = st.api.post("/v1/batch/uploads", json={"size": 10}, headers=as_alice).json()["prefix"]
    answers = []
    for url in (
        bobs_url,
        alices_prefix + "../" + bobs_url.split("/uploads/")[1],
        f"s3://{bucket}/batch-inputs/{job_id}/chunk-00000.jsonl",
        f"s3://{bucket}/batch-inputs/{uuid.uuid4()}/chunk-00000.jsonl",  # does not exist
        f"s3://{st.settings.s3_results_bucket}/x.jsonl",
    ):
        resp = st.api.post("/v1/batch", json={"model": st.model, "input_url": url}, headers=as_alice)
        answers.append((resp.status_code, resp.json()["code"], resp.json()["field"]))
        assert "upload prefix" in resp.json()["error"]
    assert set(answers) == {(400, "invalid_input", "input_url")}, answers
    assert st.api.get(f"/v1/batch/{job_id}", headers=as_bob).json()["total"] == 3
    own = upload(st, b'{"data": [5.1, 3.5, 1.4, 0.2]}\n', as_alice)
    assert st.api.post("/v1/batch", json={"model": st.model, "input_url": own}, headers=as_alice).status_code == 202


def test_get_list_and_cancel_errors(st: Stack) -> None:
    done = st.wait(st.submit({"model": st.model, "inputs": iris_inputs(2)})["job_id"])
    assert st.api.get("/v1/batch/not-a-uuid").status_code == 404
    assert st.api.get(f"/v1/batch/{uuid.uuid4()}").status_code == 404
    assert st.api.delete("/v1/batch/not-a-uuid").status_code == 404
    conflict = st.api.delete(f"/v1/batch/{done['job_id']}")
    assert conflict.status_code == 409 and "already completed" in conflict.json()["error"]
    listing = st.api.get("/v1/batch?status=completed&limit=2&offset=0").json()
    assert listing["limit"] == 2 and listing["total"] >= 3 and len(listing["jobs"]) == 2
    assert all(j["status"] == "completed" for j in listing["jobs"])
    second = st.api.get("/v1/batch?status=completed&limit=2&offset=2").json()
    assert not {j["job_id"] for j in listing["jobs"]} & {j["job_id"] for j in second["jobs"]}
    assert st.api.get("/v1/batch?status=bogus").status_code == 400


def test_jobs_answer_id_beside_job_id_location_and_an_unambiguous_list_count(st: Stack) -> None:
    resp = st.api.post("/v1/batch", json={"model": st.model, "inputs": iris_inputs(3)})
    job = resp.json()
    assert resp.status_code == 202 and job["id"] == job["job_id"] and job["total"] == 3
    assert resp.headers["Location"] == f"/v1/batch/{job['id']}"
    status = st.api.get(resp.headers["Location"]).json()
    assert status["id"] == status["job_id"] == job["id"]
    listing = st.api.get("/v1/batch?limit=1").json()
    assert listing["total_count"] == listing["total"] >= 1  # jobs matching; each job's own total counts items
    assert listing["jobs"][0]["id"] == listing["jobs"][0]["job_id"]
    bad = st.api.get("/v1/batch?limit=1&sort=asc")
    assert bad.status_code == 400 and bad.json()["field"] == "sort" and "status, limit, offset" in bad.json()["error"]


def test_cancel_of_a_job_that_just_finished_reports_the_state_it_is_in(
    st: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = st.wait(st.submit({"model": st.model, "inputs": iris_inputs(2)})["job_id"])
    real_get = batch_store.get_job

    def stale_read(*args: Any, **kwargs: Any) -> dict[str, Any]:  # as read just before the job finished
        return {**real_get(*args, **kwargs), "status": "processing"}

    monkeypatch.setattr(batch_store, "get_job", stale_read)
    conflict = st.api.delete(f"/v1/batch/{done['job_id']}")
    assert conflict.status_code == 409 and conflict.json()["code"] == "conflict"
    assert (
        f"is already completed; only pending or processing jobs can be cancelled (GET /v1/batch/{done['job_id']}"
        in conflict.json()["error"]
    )


def test_cli_submit_reports_failed_lines_and_fails_on_errors(
    st: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kinfer batch submit` of a file with a broken line: uploaded, the line fails as one item (as through
    input_url), the summary names its line, --fail-on-errors exits 3; the job lists, results filter."""
    from shared.cli import main

    server = InProcessServer("gateway", "")  # the CLI checks the model (models function) before it uploads
    monkeypatch.setenv("XDG_CONFIG_HOME", str(st.tmp))
    url = ["--url", server.url.rstrip("/"), "--key", "kf_unused_auth_is_off"]
    try:
        code = main(
            ["batch", "submit", str(ROOT / "examples" / "iris.jsonl"), "--model", st.model, "--fail-on-errors", *url]
        )
        out, err = capsys.readouterr()
        assert code == 3, err
        assert "examples/iris.jsonl:4 is not valid JSON; uploading" in err
        assert "succeeded 5, failed 1 of 6" in out and "  line 4: the input is not valid JSON" in out
        job_id = out.split()[1].rstrip(":")
        assert main(["batch", "results", job_id, "--failed", *url]) == 0
        failed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [f["index"] for f in failed] == [3] and "not valid JSON" in failed[0]["error"]
        assert main(["batch", "list", "--limit", "5", "-o", "json", *url]) == 0
        assert job_id in {j["id"] for j in json.loads(capsys.readouterr().out)["jobs"]}
        good = st.tmp / "good.jsonl"
        good.write_text('{"data": [5.1, 3.5, 1.4, 0.2]}\n\n{"data": [6.7, 3.0, 5.2, 2.3]}\n')
        assert main(["batch", "submit", str(good), "--model", st.model, "--fail-on-errors", *url]) == 0
        assert "succeeded 2, failed 0 of 2" in capsys.readouterr().out
    finally:
        server.stop()


def test_callers_see_only_their_own_jobs(st: Stack) -> None:
    st.configure(auth_required=True)
    _, alice = st.services().keys.create_key(f"alice-{st.uid}", "batch")
    _, bob = st.services().keys.create_key(f"bob-{st.uid}", "batch")
    as_alice, as_bob = {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}
    assert st.api.post("/v1/batch", json={"model": st.model, "inputs": iris_inputs(1)}).status_code == 401
    job = st.api.post("/v1/batch", json={"model": st.model, "inputs": iris_inputs(2)}, headers=as_alice).json()
    assert st.api.get(f"/v1/batch/{job['job_id']}", headers=as_alice).status_code == 200
    assert st.api.get(f"/v1/batch/{job['job_id']}", headers=as_bob).status_code == 404
    assert st.api.delete(f"/v1/batch/{job['job_id']}", headers=as_bob).status_code == 404
    ids = {j["job_id"] for j in st.api.get("/v1/batch", headers=as_bob).json()["jobs"]}
    assert job["job_id"] not in ids


def test_sink_down_marks_job_failed_not_pending(st: Stack) -> None:
    st.configure(k_sink=f"http://127.0.0.1:{free_port()}/kinfer/{SINK}")
    err = st.submit({"model": st.model, "inputs": iris_inputs(4)}, 503)
    assert "marked failed" in err["error"]
    job_id = err["error"].split()[2]
    body = st.status(job_id)
    assert body["status"] == "failed" and "event sink is unavailable" in body["error"]


# -- cancellation, idempotency, dead letter ----------------------------------------
def triton_inference_count(triton: Any) -> float:
    with urllib.request.urlopen(triton.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("nv_inference_count{") and 'model="iris_classifier"' in line
    )


def test_cancel_stops_further_inference(st: Stack) -> None:
    st.configure(batch_chunk_size=25)
    job_id = st.submit({"model": st.model, "inputs": iris_inputs(5000)})["job_id"]
    while st.status(job_id)["completed"] < 50:
        time.sleep(0.01)
    resp = st.api.delete(f"/v1/batch/{job_id}")
    assert resp.status_code == 200 and resp.json() == {"id": job_id, "job_id": job_id, "status": "cancelled"}
    time.sleep(0.5)  # a sub-batch already at Triton may finish
    frozen, inferred = st.status(job_id), triton_inference_count(st.triton)
    time.sleep(1.5)
    later = st.status(job_id)
    assert later["status"] == "cancelled" and later["completed"] == frozen["completed"] < 5000
    assert triton_inference_count(st.triton) == inferred, "Triton kept inferring after the cancel"
    partial = results_of(later["result_url"])
    assert len(partial) == later["completed"] and all("prediction" in line for line in partial)
    assert [line["index"] for line in partial] == sorted(line["index"] for line in partial)
    assert st.api.delete(f"/v1/batch/{job_id}").status_code == 409


class Capture:
    """A K_SINK that only records the CloudEvents it gets (to replay them by hand)."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.events.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/kinfer/{SINK}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def capture(st: Stack) -> Iterator[Capture]:
    cap = Capture()
    st.configure(k_sink=cap.url, batch_chunk_size=4)
    yield cap
    cap.server.shutdown()


def test_chunk_events_are_binary_versioned_and_partitioned(st: Stack, capture: Capture) -> None:
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    resp = st.api.post("/v1/batch", json={"model": st.model, "inputs": iris_inputs(10)}, headers={"traceparent": trace})
    job_id = resp.json()["job_id"]
    assert len(capture.events) == 3
    headers = [h for h, _ in capture.events]
    assert {h["ce-type"] for h in headers} == {"dev.kinfer.batch.chunk.v1"}
    assert {h["ce-subject"] for h in headers} == {job_id}
    assert len({h["ce-partitionkey"] for h in headers}) == 3
    assert all(h["ce-traceparent"].split("-")[1] == trace.split("-")[1] for h in headers)
    data = sorted((json.loads(b) for _, b in capture.events), key=lambda d: d["chunk"])  # sent in parallel
    assert [(d["chunk"], d["start"], d["count"]) for d in data] == [(0, 0, 4), (1, 4, 4), (2, 8, 2)]


def by_chunk(capture: Capture) -> list[tuple[dict[str, str], bytes]]:
    """The captured events ordered by chunk number (they are emitted in parallel)."""
    return sorted(capture.events, key=lambda event: json.loads(event[1])["chunk"])


def post_event(client: Any, headers: dict[str, str], body: bytes) -> Any:
    return client.post("/", content=body, headers=headers)


def test_same_chunk_twice_counts_once(st: Stack, capture: Capture) -> None:
    job_id = st.submit({"model": st.model, "inputs": iris_inputs(6)})["job_id"]
    worker = function_client("batch_worker", "process_batch_chunk")
    first = post_event(worker, *by_chunk(capture)[0])
    again = post_event(worker, *by_chunk(capture)[0])
    assert first.status_code == 200 and again.status_code == 200 and "skipped" in again.json()
    assert st.status(job_id)["completed"] == 4
    results = [post_event(worker, *by_chunk(capture)[1]) for _ in range(3)]
    assert [r.status_code for r in results] == [200, 200, 200]
    done = st.status(job_id)
    assert (done["status"], done["completed"], done["succeeded"]) == ("completed", 6, 6)
    assert [line["index"] for line in results_of(done["result_url"])] == list(range(6))


def test_worker_rejects_malformed_and_unknown(st: Stack, capture: Capture) -> None:
    worker = function_client("batch_worker", "process_batch_chunk")
    assert worker.post("/", content=b"{}", headers={"content-type": "application/json"}).status_code == 400
    event = CloudEvent(
        {"type": "dev.kinfer.batch.chunk.v1", "source": "/t"},
        {"job_id": str(uuid.uuid4()), "chunk": 0, "start": 0, "count": 1, "bucket": "b", "key": "k"},
    )
    unknown = post_event(worker, *to_binary(event))  # acked: nothing to redeliver, no work created
    assert (unknown.status_code, unknown.json()["skipped"]) == (200, "unknown batch job")
    assert worker.get("/health").status_code == 200


def test_dead_letter_fails_the_chunk_so_the_job_ends(st: Stack, capture: Capture) -> None:
    job_id = st.submit({"model": st.model, "inputs": iris_inputs(6)})["job_id"]
    worker = function_client("batch_worker", "process_batch_chunk")
    dead = function_client("batch_deadletter", "fail_dead_chunk")
    assert post_event(worker, *by_chunk(capture)[0]).status_code == 200
    headers, body = by_chunk(capture)[1]
    dl_headers = {**headers, "ce-knativeerrorcode": "503", "ce-knativeerrordest": "http://worker/"}
    assert post_event(dead, dl_headers, body).status_code == 200
    assert "skipped" in post_event(dead, dl_headers, body).json()
    done = st.status(job_id)
    assert (done["status"], done["completed"], done["succeeded"], done["failed"]) == ("completed", 6, 4, 2)
    lines = results_of(done["result_url"])
    assert "after all retries (last status 503)" in lines[5]["error"]


# -- intake -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_request_event_intake_is_idempotent(st: Stack, mode: str) -> None:
    event = CloudEvent(
        {"type": "dev.kinfer.batch.request.v1", "source": "/tests/batch", "id": uuid.uuid4().hex},
        {"model": st.model, "inputs": iris_inputs(3)},
    )
    headers, body = (to_binary if mode == "binary" else to_structured)(event)
    first = post_event(st.intake, headers, body)
    assert first.status_code == 202, first.text
    again = post_event(st.intake, headers, body)
    job = first.json()["jobs"][0]
    assert again.json()["jobs"][0]["job_id"] == job["job_id"]
    assert st.wait(job["job_id"])["succeeded"] == 3


def test_s3_notification_intake(st: Stack) -> None:
    services = st.services()
    bucket = services.settings.s3_input_bucket
    storage.ensure_buckets(services.s3, bucket)
    key = f"incoming/{st.model}/upload-{st.uid}.jsonl"
    storage.put_bytes(
        services.s3, bucket, key, b"\n".join(json.dumps(i).encode() for i in iris_inputs(7)), storage.JSONL_TYPE
    )
    record = {
        "Records": [
            {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}},
            {
                "eventName": "s3:ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket}, "object": {"key": "elsewhere/x.jsonl"}},
            },
        ]
    }
    event = CloudEvent(
        {
            "type": "dev.knative.kafka.event",
            "id": "partition:0/offset:7",
            "source": f"/apis/v1/namespaces/kinfer/kafkasources/batch-intake-source#{st.uid}",
        },
        record,
    )
    resp = post_event(st.intake, *to_binary(event))
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert len(body["jobs"]) == 1 and len(body["ignored"]) == 1
    done = st.wait(body["jobs"][0]["job_id"])
    assert (done["status"], done["succeeded"]) == ("completed", 7)
    assert done["input_url"] == f"s3://{bucket}/{key}"
    assert post_event(st.intake, *to_binary(event)).json()["jobs"][0]["job_id"] == done["job_id"]


def test_intake_rejects_garbage(st: Stack) -> None:
    event = CloudEvent({"type": "com.example.other", "source": "/x"}, {"hello": 1})
    assert post_event(st.intake, *to_binary(event)).status_code == 400
    event = CloudEvent(
        {"type": "dev.kinfer.batch.request.v1", "source": "/x"}, {"model": "no-such-model", "inputs": [{"data": [1]}]}
    )
    assert post_event(st.intake, *to_binary(event)).status_code == 422


# -- failures: a killed worker process, Triton down and back -------------------------
def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def test_killed_worker_is_redelivered_and_counted_once(st: Stack, tmp_path: Path) -> None:
    port = free_port()
    settings = st.configure(batch_chunk_size=50)
    env = {**os.environ, **settings_env(settings), "K_SERVICE": "batch-worker"}
    log_file = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--target",
            "process_batch_chunk",
            "--source",
            "functions/batch_worker/main.py",
            "--workers",
            "2",
        ],
        cwd=ROOT,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    relay = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        relay = st.make_relay(f"http://127.0.0.1:{port}/", retry=20, delay=0.05, idle=2.0)
        st.configure(batch_chunk_size=50, k_sink=relay.sink_url(SINK))
        job_id = st.submit({"model": st.model, "inputs": iris_inputs(3000)})["job_id"]
        while st.status(job_id)["completed"] < 100:
            time.sleep(0.005)
        children = _children(proc.pid)
        assert children, "uvicorn has no worker process"
        for child in children:
            os.kill(child, signal.SIGKILL)
        done = st.wait(job_id, timeout=90)
        assert (done["status"], done["completed"], done["succeeded"], done["failed"]) == ("completed", 3000, 3000, 0)
        lines = results_of(done["result_url"])
        assert [line["index"] for line in lines] == list(range(3000))
        with st.services().db.begin() as conn:
            chunks = conn.execute(
                batch_store.batch_chunks.select().where(batch_store.batch_chunks.c.job_id == uuid.UUID(job_id))
            ).all()
        assert len(chunks) == 60 and all(c.status == "done" for c in chunks)
        assert sum(c.processed for c in chunks) == 3000
        assert any(c.attempts > 1 for c in chunks), "the kill interrupted no chunk"
    finally:
        if relay is not None:
            relay.stop()
        proc.terminate()
        proc.wait(10)
        log_file.close()


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the worker server exited"
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


def test_triton_down_then_back_job_completes(st: Stack, tmp_path: Path) -> None:
    from shared.localstack.triton import TritonServer, default_repository

    ports = [free_port() for _ in range(3)]
    own = TritonServer(default_repository(), tmp_path, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2])
    relay = st.make_relay(st.worker.url, retry=12, delay=0.1)
    try:
        st.configure(k_sink=relay.sink_url(SINK), batch_chunk_size=5)
        model = register_model(st.services(), f"flaky-{st.uid}", own.grpc_url)["name"]
        job_id = st.submit({"model": model, "inputs": iris_inputs(12)})["job_id"]
        time.sleep(1.5)  # deliveries fail with 503 and are retried with backoff
        body = st.status(job_id)
        assert body["completed"] == 0 and body["status"] in batch_store.ACTIVE
        own.start(timeout=120)
        done = st.wait(job_id, timeout=120)
        assert (done["status"], done["completed"], done["succeeded"]) == ("completed", 12, 12)
    finally:
        relay.stop()
        own.stop()


# -- no job stays active forever ----------------------------------------------------
def backdate(st: Stack, job_id: str, seconds: int) -> None:
    """Make a job look idle for ``seconds`` (as if its chunk events had been lost that long ago)."""
    import sqlalchemy as sa

    with st.services().db.begin() as conn:
        conn.execute(
            sa.text("UPDATE batch_jobs SET updated_at = clock_timestamp() - make_interval(secs => :s) WHERE id = :id"),
            {"s": seconds, "id": uuid.UUID(job_id)},
        )


def test_a_job_whose_chunks_stopped_is_failed_with_the_reason_when_read(st: Stack, capture: Capture) -> None:
    job_id = st.submit({"model": st.model, "inputs": iris_inputs(10)})["job_id"]  # events swallowed
    worker = function_client("batch_worker", "process_batch_chunk")
    assert post_event(worker, *by_chunk(capture)[0]).status_code == 200  # one chunk of three done
    backdate(st, job_id, st.settings.batch_stall_timeout_s - 30)
    assert st.status(job_id)["status"] == "processing"  # within the window: untouched
    backdate(st, job_id, st.settings.batch_stall_timeout_s + 1)
    listed = st.api.get("/v1/batch?status=processing").json()["jobs"]
    assert job_id in [j["job_id"] for j in listed]  # listed as it was read ...
    job = st.status(job_id)  # ... and failed by that read
    assert job["status"] == "failed" and job["finished_at"] and job["result_url"] is None
    assert job["error"].startswith(f"no progress for {st.settings.batch_stall_timeout_s} s")
    assert "1 of 3 chunks finished" in job["error"] and job["errors"] == [{"error": job["error"]}]
    assert post_event(worker, *by_chunk(capture)[1]).json()["skipped"] == "job failed"  # late chunks change nothing


def test_reconcile_requeues_lost_chunk_events_and_fails_jobs_whose_inputs_are_gone(st: Stack, capture: Capture) -> None:
    kept = st.submit({"model": st.model, "inputs": iris_inputs(10)})["job_id"]
    lost = st.submit({"model": st.model, "inputs": iris_inputs(5)})["job_id"]
    services = st.services()
    storage.delete_prefix(services.s3, st.settings.s3_input_bucket, f"batch-inputs/{lost}/")
    st.configure(batch_chunk_size=4)  # K_SINK back to the relay, as kinfer up has it
    outcome = st.services().reaper.reconcile()
    assert kept in outcome["requeued"] and lost in outcome["failed"]
    done = st.wait(kept)
    assert (done["status"], done["succeeded"]) == ("completed", 10)
    assert [line["index"] for line in results_of(done["result_url"])] == list(range(10))
    failed = st.status(lost)
    assert failed["status"] == "failed" and "inputs of 2 chunk(s) were lost" in failed["error"]
    for other in outcome["requeued"]:  # jobs earlier tests left active were queued again, too
        st.wait(other)
    assert st.services().reaper.reconcile() == {"requeued": [], "failed": []}


def test_result_url_is_offered_only_while_the_results_object_exists(st: Stack) -> None:
    done = st.wait(st.submit({"model": st.model, "inputs": iris_inputs(3)})["job_id"])
    assert done["result_url"]
    services = st.services()
    storage.delete_prefix(services.s3, st.settings.s3_results_bucket, f"batch-results/{done['job_id']}/")
    gone = st.status(done["job_id"])
    assert gone["status"] == "completed" and gone["result_url"] is None
    listed = {j["job_id"]: j for j in st.api.get("/v1/batch").json()["jobs"]}
    assert listed[done["job_id"]]["result_url"] is None


def test_chunk_results_lost_before_the_merge_fail_the_job(st: Stack, capture: Capture) -> None:
    job_id = st.submit({"model": st.model, "inputs": iris_inputs(6)})["job_id"]
    worker = function_client("batch_worker", "process_batch_chunk")
    assert post_event(worker, *by_chunk(capture)[0]).status_code == 200
    storage.delete_prefix(st.services().s3, st.settings.s3_results_bucket, f"batch-results/{job_id}/")
    last = post_event(worker, *by_chunk(capture)[1])
    assert last.status_code == 200 and last.json()["job_status"] == "failed"
    job = st.status(job_id)
    assert job["status"] == "failed" and "results of some chunks are gone" in job["error"]


def test_one_key_may_hold_only_its_share_of_the_workers(st: Stack) -> None:
    """BATCH_MAX_ACTIVE_JOBS and BATCH_MAX_ACTIVE_ITEMS per key: past them a submit is 429 with Retry-After
    (six 100k-item jobs of one key once kept another key's 6-item job waiting 20 s)."""
    from shared.batch import store
    from shared.domain import ANONYMOUS

    with st.services().db.read() as conn:
        busy, items = store.active_load(conn, ANONYMOUS)  # other tests' jobs still running, if any
    st.configure(batch_max_active_jobs=busy + 2, batch_max_active_items=items + 25)
    stuck = register_model(st.services(), f"stuck-{uuid.uuid4().hex[:8]}", f"127.0.0.1:{free_port()}")["name"]
    held = [st.submit({"model": stuck, "inputs": iris_inputs(10)}) for _ in range(2)]
    try:
        over = st.api.post("/v1/batch", json={"model": stuck, "inputs": iris_inputs(1)})
        assert over.status_code == 429 and over.json()["code"] == "rate_limited", over.text
        assert "BATCH_MAX_ACTIVE_JOBS" in over.json()["error"] and int(over.headers["Retry-After"]) >= 1
        st.configure(batch_max_active_jobs=busy + 10, batch_max_active_items=items + 25)
        big = st.api.post("/v1/batch", json={"model": stuck, "inputs": iris_inputs(6)})
        assert big.status_code == 429 and "BATCH_MAX_ACTIVE_ITEMS" in big.json()["error"], big.text
        assert st.api.post("/v1/batch", json={"model": stuck, "inputs": iris_inputs(5)}).status_code == 202
    finally:
        for job in st.api.get("/v1/batch?limit=100").json()["jobs"]:
            if job["model"] == stuck and job["status"] in store.ACTIVE:
                st.api.delete(f"/v1/batch/{job['job_id']}")
        # ended either way: cancelled, or failed first when the chunk's retries against the closed port ran out
        assert {st.status(j["job_id"])["status"] for j in held} <= {"cancelled", "failed"}


def test_parallel_submits_of_one_key_cannot_pass_its_share_together(st: Stack) -> None:
    """The bound is checked in the transaction that inserts the job, under a per-key lock: 12 submits at once
    with room for 2 jobs start exactly 2 (an attacker trial had 12 of 16 parallel submits accepted with a bound
    of 8, the count read before any insert)."""
    from concurrent.futures import ThreadPoolExecutor

    from shared.batch import store
    from shared.errors import RateLimited

    owner = f"race-{uuid.uuid4().hex[:8]}"
    stuck = register_model(st.services(), f"stuck-{uuid.uuid4().hex[:8]}", f"127.0.0.1:{free_port()}")["name"]
    st.configure(batch_max_active_jobs=2, batch_max_active_items=1_000_000)
    services = st.services()

    def submit(_: int) -> str:
        try:
            return services.jobs.submit_job({"model": stuck, "inputs": iris_inputs(3)}, owner)["job_id"]
        except RateLimited:
            return "429"

    try:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(submit, range(12)))
        assert answers.count("429") == 10, answers
        with services.db.read() as conn:
            assert store.active_load(conn, owner) == (2, 6)
    finally:
        for job_id in answers:
            if job_id != "429":
                services.jobs.cancel_job(job_id, owner)


def test_a_signature_checking_s3_refuses_an_upload_of_another_length() -> None:
    """What the signed Content-Length of an upload grant buys, against an S3 server that checks signatures
    as S3 and MinIO do (the local server with ``keys``): the declared size is accepted, one byte more or a
    megabyte is 403."""
    import boto3
    import requests
    from botocore.config import Config

    server = S3Server(port=free_port(), keys={"AKIDUPLOADTEST": "upload-test-secret"})
    server.start()
    try:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id="AKIDUPLOADTEST",
            aws_secret_access_key="upload-test-secret",
            config=Config(signature_version="s3v4", region_name="us-east-1", s3={"addressing_style": "path"}),
        )
        storage.ensure_buckets(client, "uploads-signed")
        url = storage.presign_put(client, "uploads-signed", "in.jsonl", 60, storage.JSONL_TYPE, content_length=10)
        sent = {"Content-Type": storage.JSONL_TYPE}
        assert requests.put(url, data=b"x" * 11, headers=sent, timeout=30).status_code == 403
        assert requests.put(url, data=b"x" * 2**20, headers=sent, timeout=30).status_code == 403
        assert requests.put(url, data=b"0123456789", headers=sent, timeout=30).status_code == 200
        assert storage.get_bytes(client, "uploads-signed", "in.jsonl") == b"0123456789"
    finally:
        server.stop()
