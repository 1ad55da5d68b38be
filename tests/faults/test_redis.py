"""Redis paused (SIGSTOP) and then killed, under load: registry reads and inference keep answering 200
(PostgreSQL behind the cache, per-process breakers), registry writes answer 503 and change nothing,
and after Redis is back no read is stale."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.localstack.triton import TritonServer
from tests.faults.conftest import Load, RestartableRedis, assert_unavailable_answers, served

pytestmark = pytest.mark.faults


def test_redis_paused_then_killed_under_load(
    base_settings: Any, restartable_redis: RestartableRedis, fault_triton: TritonServer, tmp_path: Path
) -> None:
    from shared.services import reset_services

    settings = replace(base_settings, redis_url=restartable_redis.url)
    services = reset_services(settings)
    name = f"iris-redis-{uuid.uuid4().hex[:8]}"
    model = services.registry.create_model(
        {
            "name": name,
            "version": "1",
            "framework": "onnx",
            "format": "onnx",
            "backend_url": fault_triton.grpc_url,
            "triton_model": "iris_classifier",
            "description": "v0",
        },
    )
    reset_services(None)
    with (
        served("models", "manage_models", settings, tmp_path) as (models, _),
        served("infer", "run_inference", settings, tmp_path) as (infer, _),
    ):
        body = {"model": name, "input": {"data": [5.1, 3.5, 1.4, 0.2]}}

        def send(session: requests.Session) -> requests.Response:
            if session.headers.get("x-turn") == "infer":
                session.headers["x-turn"] = "read"
                return session.post(f"{infer}/v1/infer", json=body, timeout=10)
            session.headers["x-turn"] = "infer"
            return session.get(f"{models}/v1/models/{model['id']}", timeout=10)

        def patch(description: str) -> requests.Response:
            return requests.patch(f"{models}/v1/models/{model['id']}", json={"description": description}, timeout=10)

        writes: dict[str, list[int]] = {"paused": [], "killed": []}
        with Load(send, threads=4, limit_s=60) as load:
            assert patch("v1").status_code == 200
            time.sleep(0.5)
            restartable_redis.pause()
            paused = time.monotonic()
            time.sleep(1.0)
            writes["paused"] = [patch(f"paused-{i}").status_code for i in range(3)]
            time.sleep(1.0)
            restartable_redis.resume()
            resumed = time.monotonic()
            time.sleep(1.0)
            v2_at = time.monotonic()
            assert patch("v2").status_code == 200
            time.sleep(0.5)
            restartable_redis.kill()
            killed = time.monotonic()
            time.sleep(1.0)
            writes["killed"] = [patch(f"killed-{i}").status_code for i in range(3)]
            time.sleep(1.0)
            restartable_redis.restart()
            restarted = time.monotonic()
            recovered = None
            deadline = time.monotonic() + 15
            while recovered is None and time.monotonic() < deadline:
                if patch("v3").status_code == 200:
                    recovered = time.monotonic() - restarted
                time.sleep(0.2)
            time.sleep(0.5)
        final = requests.get(f"{models}/v1/models/{model['id']}", timeout=10).json()
        listed = requests.get(f"{models}/v1/models", params={"name": name}, timeout=10).json()
    answers = load.answers
    assert_unavailable_answers(answers)
    outage = [a for a in answers if paused <= a.at < resumed or killed <= a.at < restarted]
    ok_in_outage = sum(1 for a in outage if a.status == 200)
    assert ok_in_outage >= len(outage) * 0.9, load.counts()  # reads and inference go on
    assert writes == {"paused": [503, 503, 503], "killed": [503, 503, 503]}
    assert recovered is not None, "registry writes did not come back after Redis restarted"
    assert final["description"] == "v3" and listed["total"] == 1  # no refused write landed, nothing doubled
    after_resume = [a for a in answers if resumed + 0.3 <= a.at < v2_at and a.status == 200 and "model" not in a.body]
    assert after_resume and all(a.body["description"] == "v1" for a in after_resume)
    reads_after = [a for a in load.since(restarted + recovered + 0.3) if a.status == 200 and "model" not in a.body]
    assert all(a.body["description"] == "v3" for a in reads_after), "a read after the write was stale"
    counts = load.counts()
    print(
        f"\nredis pause+kill: {load.sent} requests (reads + inference), {counts[200]} x 200, {counts[503]} x 503, "
        f"0 other; during the outages {ok_in_outage}/{len(outage)} answered 200; writes refused "
        f"{writes['paused'].count(503) + writes['killed'].count(503)}/6 with 503; writes back "
        f"{recovered:.2f}s after Redis restarted; 0 stale reads, 1 model row"
    )


def test_batch_submit_during_a_redis_stall_answers_503_within_seconds(
    base_settings: Any, restartable_redis: RestartableRedis, fault_triton: TritonServer, tmp_path: Path
) -> None:
    """Redis paused under the local relay (the KafkaSink stand-in keeps its topics there): the relay never
    answers, and POST /v1/batch waited 3 x 10 s of sink read timeouts (30.7 s, issue 20) before its 503.
    Now every emit, retries included, ends within EVENT_EMIT_TIMEOUT_S (5 s): 503 with Retry-After, the job
    marked failed, and a submit after Redis is back is accepted."""
    from shared.localstack import procs
    from shared.localstack.relay import server as relay_server
    from shared.localstack.s3 import S3Server
    from shared.services import reset_services
    from tests.conftest import free_port
    from tests.faults.conftest import worker_manifest

    uid = uuid.uuid4().hex[:8]
    s3 = S3Server(port=free_port())
    s3.start()
    manifests = tmp_path / "knative"
    manifests.mkdir()
    (manifests / "eventing.yaml").write_text(worker_manifest(f"faults.stall.{uid}", "faults-batch-worker"))
    relay_port = free_port()
    relay_pid = relay_server.spawn(
        {"batch-worker": f"http://127.0.0.1:{free_port()}/", "batch-deadletter": f"http://127.0.0.1:{free_port()}/"},
        manifests=manifests,
        port=relay_port,
        redis_url=restartable_redis.url,
        log_path=tmp_path / "relay.log",
        key_prefix=f"kinfer:faults:{uid}:",
    )
    settings = replace(
        base_settings,
        redis_url=restartable_redis.url,
        s3_endpoint_url=s3.url,
        k_sink=f"http://127.0.0.1:{relay_port}/kinfer/batch-chunks",
        s3_input_bucket=f"in-{uid}",
        s3_results_bucket=f"out-{uid}",
    )
    services = reset_services(settings)
    name = services.registry.create_model(
        {
            "name": f"iris-stall-{uid}",
            "version": "1",
            "framework": "onnx",
            "format": "onnx",
            "backend_url": fault_triton.grpc_url,
            "triton_model": "iris_classifier",
        },
    )["name"]
    reset_services(None)
    body = {"model": name, "inputs": [{"data": [5.1, 3.5, 1.4, 0.2]}] * 3}
    try:
        with served("batch", "manage_batch_jobs", settings, tmp_path, {"BATCH_MAX_ACTIVE_JOBS": "100000"}) as (
            batch,
            _,
        ):
            first = requests.post(f"{batch}/v1/batch", json=body, timeout=60)
            assert first.status_code == 202, first.text
            restartable_redis.pause()
            try:
                started = time.monotonic()
                resp = requests.post(f"{batch}/v1/batch", json=body, timeout=60)
                waited = time.monotonic() - started
            finally:
                restartable_redis.resume()
            assert resp.status_code == 503, resp.text
            assert int(resp.headers.get("retry-after", "0")) >= 1 and resp.json()["code"] == "unavailable"
            assert waited < 8.0, f"POST /v1/batch took {waited:.1f}s to answer 503 during the Redis stall"
            job_id = resp.json()["error"].split("batch job ")[1].split()[0]
            assert requests.get(f"{batch}/v1/batch/{job_id}", timeout=10).json()["status"] == "failed"
            deadline = time.monotonic() + 20
            while (after := requests.post(f"{batch}/v1/batch", json=body, timeout=60)).status_code != 202:
                assert time.monotonic() < deadline, after.text
                time.sleep(0.5)
            for accepted in (first, after):  # no worker here: end them rather than leave them pending
                requests.delete(f"{batch}/v1/batch/{accepted.json()['job_id']}", timeout=10)
    finally:
        procs.stop(relay_pid)
        s3.stop()
    print(f"\nredis stall: POST /v1/batch answered 503 (Retry-After) in {waited:.2f}s; 202 again once Redis was back")
