"""A batch worker killed while Triton wakes from zero loses no async request (issue 19).

Real processes: Triton (nvidia-pytriton's tritonserver) behind the local activator with scale to zero on
(``kinfer up --scale-to-zero``'s ``shared.localstack.activator``, a short LOCAL_SCALE_TO_ZERO_IDLE_S), the
event relay in its own process wired from KafkaSink/KafkaSource manifests, ``batch_worker`` and
``batch_deadletter`` under ``kinfer serve``, a callback receiver, PostgreSQL and Redis. Triton idle-stops;
async requests (``Prefer: respond-async``, each with a callback URL) reach the worker, whose calls wake
Triton; while it wakes the worker is SIGKILLed with those requests in hand, and a new worker starts on
the same address. Every request must then succeed once with the right answer, and the receiver get one
signed callback per request: the relay redelivers what the dead worker held (nothing acked it), and the
worker runs a request left ``running`` by a dead attempt again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.batch import callbacks
from shared.localstack import procs
from shared.localstack.activator import Activator, ActivatorThread, Route, TritonPod
from shared.localstack.relay import server as relay_server
from shared.localstack.triton import TritonServer, default_repository
from tests.conftest import free_port, function_client
from tests.faults.conftest import served, worker_manifest

pytestmark = pytest.mark.faults

ROW = [5.1, 3.5, 1.4, 0.2]
SECRET = "faults-callback-secret"
REQUESTS = 24
IDLE_S = 4.0  # LOCAL_SCALE_TO_ZERO_IDLE_S of this test


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every POST (headers lower-cased, body)."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/kinfer"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@dataclass
class Rig:
    settings: Any
    tmp: Path
    running: ActivatorThread
    receiver: Receiver
    model: str
    worker_port: int

    def worker(self) -> Any:
        return served("batch_worker", "process_batch_chunk", self.settings, self.tmp, port=self.worker_port)

    def submit(self) -> str:
        resp = function_client("infer", "run_inference").post(
            "/v1/infer",
            json={"model": self.model, "input": {"data": ROW}},
            headers={"Prefer": "respond-async", "Kinfer-Callback-URL": self.receiver.url},
        )
        assert resp.status_code == 202, resp.text
        return str(resp.json()["id"])

    def get(self, request_id: str) -> dict[str, Any]:
        resp = function_client("infer", "run_inference").get(f"/v1/requests/{request_id}")
        assert resp.status_code == 200, resp.text
        return dict(resp.json())


@pytest.fixture
def rig(base_settings: Any, tmp_path: Path) -> Iterator[Rig]:
    from shared.services import reset_services

    uid = uuid.uuid4().hex[:8]
    internal = [free_port() for _ in range(3)]
    public_grpc = free_port()
    pod = TritonPod(TritonServer(default_repository(), tmp_path / "triton", *internal), start_timeout_s=120)
    running = ActivatorThread(Activator(pod, (Route(public_grpc, internal[1]),), idle_s=IDLE_S, hold_s=120, tick_s=0.2))
    manifests = tmp_path / "knative"
    manifests.mkdir()
    (manifests / "eventing.yaml").write_text(worker_manifest(f"faults.async.{uid}", "faults-async-worker"))
    worker_port, dead_port, relay_port = free_port(), free_port(), free_port()
    receiver = Receiver()
    backend = f"127.0.0.1:{public_grpc}"
    settings = dataclasses.replace(
        base_settings,
        triton_url=backend,
        probe_triton_url=False,  # as kinfer up --scale-to-zero: a probe would keep Triton awake
        k_sink=f"http://127.0.0.1:{relay_port}/kinfer/batch-chunks",
        callback_signing_secret=SECRET,
        callback_allowlist=(f"127.0.0.1:{receiver.server.server_port}",),
        request_wait_s=10.0,
    )
    services = reset_services(settings)
    model = services.registry.create_model(
        {
            "name": f"iris-async-zero-{uid}",
            "version": "1",
            "framework": "onnx",
            "format": "onnx",
            "backend_url": backend,
            "triton_model": "iris_classifier",
        }
    )["name"]
    prefix = f"kinfer:faults:async:{uid}:"
    relay_pid = 0
    try:
        with served("batch_deadletter", "fail_dead_chunk", settings, tmp_path, port=dead_port):
            relay_pid = relay_server.spawn(
                {
                    "batch-worker": f"http://127.0.0.1:{worker_port}/",
                    "batch-deadletter": f"http://127.0.0.1:{dead_port}/",
                },
                manifests=manifests,
                port=relay_port,
                redis_url=settings.redis_url,
                log_path=tmp_path / "relay.log",
                idle_timeout_s=2.0,
                key_prefix=prefix,
                workers=8,
            )
            yield Rig(settings, tmp_path, running, receiver, model, worker_port)
    finally:
        if relay_pid:
            procs.stop(relay_pid)
        running.close()
        receiver.server.shutdown()
        reset_services(None)
        client = redis.Redis.from_url(settings.redis_url)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not within {timeout:.0f}s"
        time.sleep(0.02)


def test_worker_killed_while_triton_wakes_loses_nothing(rig: Rig) -> None:
    activator = rig.running.activator
    sync = function_client("infer", "run_inference").post(
        "/v1/infer", json={"model": rig.model, "input": {"data": ROW}}, headers={"Prefer": "wait=60"}
    )
    assert sync.status_code == 200 and sync.json()["prediction"] == "setosa", sync.text
    _until(lambda: activator.state == "idle-stopped", IDLE_S + 10, "Triton idle-stopped")
    assert activator.pod.pids() == {"triton": None, "agent": None}

    with rig.worker() as (_, worker):
        ids = [rig.submit() for _ in range(REQUESTS)]
        _until(lambda: activator.state == "waking", 30, "the worker's calls waking Triton")
        _until(lambda: any(rig.get(i)["status"] == "running" for i in ids), 30, "a request in the worker's hands")
        os.kill(worker.pid, signal.SIGKILL)
        state_at_kill = activator.state
        running_at_kill = [i for i in ids if rig.get(i)["status"] == "running"]  # nothing runs them now
    assert state_at_kill == "waking", "the worker was killed after the wake, not during it"
    assert running_at_kill, "the kill interrupted no request"

    with rig.worker():
        deadline = time.monotonic() + 120
        outcomes: dict[str, dict[str, Any]] = {}
        while len(outcomes) < REQUESTS and time.monotonic() < deadline:
            for i in ids:
                if i not in outcomes and (found := rig.get(i))["status"] in ("succeeded", "failed"):
                    outcomes[i] = found
            time.sleep(0.1)
        _until(lambda: len(rig.receiver.posts) >= REQUESTS, 60, "a callback for every request")
        time.sleep(2.0)  # a duplicate would come now: redelivery backs off 1 s here

    lost = [i for i in ids if i not in outcomes]
    assert not lost, f"{len(lost)} of {REQUESTS} async requests never finished"
    wrong = {
        i: (o["status"], o["http_status"], (o.get("error") or {}).get("error"))
        for i, o in outcomes.items()
        if o["status"] != "succeeded" or o["result"]["prediction"] != "setosa"
    }
    assert not wrong, f"{len(wrong)} of {REQUESTS} requests without the right answer: {wrong}"
    assert all(o["http_status"] == 200 and o["result"]["model"] == rig.model for o in outcomes.values())
    retried = [i for i in running_at_kill if outcomes[i]["attempts"] >= 2]
    assert retried == running_at_kill, "a request the dead worker held was not run again"

    delivered = Counter(headers["kinfer-request-id"] for headers, _ in rig.receiver.posts)
    assert delivered == Counter(dict.fromkeys(ids, 1)), f"callbacks not exactly one per request: {delivered}"
    for headers, body in rig.receiver.posts:
        assert callbacks.verify(SECRET, headers["kinfer-signature"], body), "an unsigned or mis-signed callback"
        sent = json.loads(body)
        assert sent["status"] == "succeeded" and sent["result"]["prediction"] == "setosa"
    assert activator.wakes >= 2 and not activator.error  # started by the fixture, woken by the worker
    print(
        f"\nworker SIGKILLed while Triton woke: {REQUESTS} async requests, {len(running_at_kill)} in the dead "
        f"worker's hands, all run again; {REQUESTS} succeeded (setosa), 0 lost, {len(rig.receiver.posts)} "
        f"callbacks, one per request, all signed; last wake {activator.last_wake_s}s"
    )
