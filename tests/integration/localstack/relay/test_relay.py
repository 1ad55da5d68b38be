"""The event relay end to end: real Redis, real HTTP subscribers, the fixture manifests."""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from shared.localstack.relay.server import EventRelay, spawn
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

MANIFESTS = ROOT / "tests" / "fixtures" / "knative" / "relay"
REDIS_URL = "redis://127.0.0.1:6379/0"
WORKER_PORT, DEAD_PORT, INTAKE_PORT = 18150, 18151, 18152
_relay_ports = itertools.count(18120)
Behaviour = Callable[[int], tuple[int, bytes]]


class Subscriber:
    """A real HTTP subscriber that records what it receives and answers as ``behaviour`` says."""

    def __init__(self, port: int) -> None:
        self.port, self.calls, self.lock = port, [], threading.Lock()
        self.behaviour: Behaviour = lambda n: (200, b"")
        self.active = self.max_active = 0
        self.delay_s = 0.0
        sub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status, reply = sub.record({k.lower(): v for k, v in self.headers.items()}, body, self.path)
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def record(self, headers: dict[str, str], body: bytes, path: str) -> tuple[int, bytes]:
        with self.lock:
            self.calls.append({"t": time.monotonic(), "headers": headers, "body": body, "path": path})
            n = len(self.calls)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay_s)
            return self.behaviour(n)
        finally:
            with self.lock:
                self.active -= 1

    def reset(self) -> None:
        with self.lock:
            self.calls, self.active, self.max_active, self.delay_s = [], 0, 0, 0.0
        self.behaviour = lambda n: (200, b"")

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.calls) >= count:
                return list(self.calls)
            time.sleep(0.01)
        raise AssertionError(f"subscriber on {self.port} got {len(self.calls)} call(s), expected {count}")


@pytest.fixture(scope="module")
def subscribers():
    subs = {
        name: Subscriber(port)
        for name, port in (
            ("batch-worker", WORKER_PORT),
            ("batch-deadletter", DEAD_PORT),
            ("batch-intake", INTAKE_PORT),
        )
    }
    yield subs
    for sub in subs.values():
        sub.server.shutdown()
        sub.server.server_close()


@pytest.fixture
def rds():
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is needed for the relay tests: {exc}")
    yield client
    client.close()


@pytest.fixture
def prefix(rds):
    value = f"kinfer-test:relay:{uuid.uuid4().hex[:10]}:"
    yield value
    keys = list(rds.scan_iter(match=value + "*"))
    if keys:
        rds.delete(*keys)


@pytest.fixture
def make_relay(rds, prefix, subscribers):
    relays: list[EventRelay] = []
    for sub in subscribers.values():
        sub.reset()

    def make(**kwargs: Any) -> EventRelay:
        targets = {name: sub.url for name, sub in subscribers.items()}
        relay = EventRelay(rds, MANIFESTS, targets, port=next(_relay_ports), key_prefix=prefix, block_s=0.1, **kwargs)
        relay.start()
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        relay.stop()


def _event(**extra: Any) -> CloudEvent:
    attributes = {
        "type": "dev.kinfer.batch.chunk.v1",
        "source": "/kinfer/batch",
        "subject": "job-1",
        "id": uuid.uuid4().hex,
        "partitionkey": "job-1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    attributes.update(extra)
    return CloudEvent(attributes, {"job_id": "job-1", "chunk": 3, "items": [[1.0, 2.0]]})


def _post(relay: EventRelay, event: CloudEvent, mode: str = "binary", sink: str = "batch-chunks") -> requests.Response:
    headers, body = to_binary(event) if mode == "binary" else to_structured(event)
    return requests.post(relay.sink_url(sink), data=body, headers=headers, timeout=5)


def _assert_same_event(call: dict[str, Any], event: CloudEvent) -> None:
    headers = call["headers"]
    assert headers["content-type"] == "application/json"
    for name in ("id", "type", "source", "subject", "partitionkey", "traceparent", "specversion"):
        assert headers[f"ce-{name}"] == event[name]
    assert json.loads(call["body"]) == event.data


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_event_in_either_mode_reaches_the_subscriber_in_binary_mode(make_relay, subscribers, mode):
    relay = make_relay()
    event = _event()
    resp = _post(relay, event, mode)
    assert resp.status_code == 202
    [call] = subscribers["batch-worker"].wait_for(1)
    _assert_same_event(call, event)


def test_intake_source_uses_the_sink_uri_path(make_relay, subscribers):
    relay = make_relay()
    event = _event(type="dev.kinfer.batch.request.v1")
    assert _post(relay, event, sink="batch-requests").status_code == 202
    [call] = subscribers["batch-intake"].wait_for(1)
    assert call["path"] == "/events"
    _assert_same_event(call, event)


def test_retries_with_exponential_backoff_until_success(make_relay, subscribers):
    worker = subscribers["batch-worker"]
    worker.behaviour = lambda n: (503, b"busy") if n <= 2 else (200, b"")
    relay = make_relay()
    assert _post(relay, _event()).status_code == 202
    calls = worker.wait_for(3)
    gaps = [b["t"] - a["t"] for a, b in zip(calls, calls[1:], strict=False)]
    assert gaps[0] >= 0.1 * 0.9 and gaps[1] >= 0.2 * 0.9  # PT0.05S * 2**1, * 2**2
    assert len({c["headers"]["ce-id"] for c in calls}) == 1
    time.sleep(0.3)
    assert len(worker.calls) == 3 and subscribers["batch-deadletter"].calls == []
    assert _wait_health(relay)["pending"] == 0


def test_permanent_failure_goes_to_the_dead_letter_sink_at_once(make_relay, subscribers):
    worker, dead = subscribers["batch-worker"], subscribers["batch-deadletter"]
    worker.behaviour = lambda n: (400, b'{"error": "bad chunk"}')
    relay = make_relay()
    event = _event()
    _post(relay, event, "structured")
    [call] = dead.wait_for(1)
    _assert_same_event(call, event)
    assert call["headers"]["ce-knativeerrorcode"] == "400"
    assert call["headers"]["ce-knativeerrordest"] == worker.url
    assert base64.b64decode(call["headers"]["ce-knativeerrordata"]) == b'{"error": "bad chunk"}'
    assert len(worker.calls) == 1
    assert _wait_health(relay)["pending"] == 0


def test_exhausted_retries_go_to_the_dead_letter_sink(make_relay, subscribers):
    worker, dead = subscribers["batch-worker"], subscribers["batch-deadletter"]
    worker.behaviour = lambda n: (503, b"down")
    relay = make_relay()
    _post(relay, _event())
    [call] = dead.wait_for(1)
    assert len(worker.calls) == 4  # the first attempt and retry: 3
    assert call["headers"]["ce-knativeerrorcode"] == "503"


def test_deliveries_run_in_parallel(make_relay, subscribers):
    worker = subscribers["batch-worker"]
    worker.delay_s = 0.3
    relay = make_relay(workers=8)
    started = time.monotonic()
    for _ in range(8):
        assert _post(relay, _event()).status_code == 202
    worker.wait_for(8)
    assert worker.max_active >= 4
    assert time.monotonic() - started < 8 * 0.3


def test_unacked_entry_of_a_crashed_consumer_is_redelivered(rds, prefix, make_relay, subscribers):
    first = make_relay()
    event = _event()
    subscribers["batch-worker"].behaviour = lambda n: (200, b"")
    first.stop()  # groups exist now; the crashed consumer below reads in the same group
    key = f"{prefix}topic:test.batch.chunks"
    from shared.localstack.relay.delivery import encode_event

    rds.xadd(key, encode_event(event))
    taken = rds.xreadgroup("test-batch-worker", "crashed-relay", {key: ">"}, count=10)
    assert len(taken[0][1]) == 1
    assert rds.xpending(key, "test-batch-worker")["pending"] == 1
    second = make_relay(idle_timeout_s=0.3)
    [call] = subscribers["batch-worker"].wait_for(1, timeout=5)
    _assert_same_event(call, event)
    assert _wait_health(second)["pending"] == 0


def test_killed_relay_process_leaves_its_event_for_the_next_one(rds, prefix, make_relay, subscribers, tmp_path):
    worker = subscribers["batch-worker"]
    worker.delay_s = 3.0
    targets = {name: sub.url for name, sub in subscribers.items()}
    port = next(_relay_ports)
    pid = spawn(
        targets, manifests=MANIFESTS, port=port, redis_url=REDIS_URL, key_prefix=prefix, log_path=tmp_path / "relay.log"
    )
    try:
        event = _event()
        resp = requests.post(
            f"http://127.0.0.1:{port}/kinfer/batch-chunks",
            data=to_binary(event)[1],
            headers=to_binary(event)[0],
            timeout=5,
        )
        assert resp.status_code == 202
        worker.wait_for(1)
    finally:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    worker.delay_s = 0.0
    relay = make_relay(idle_timeout_s=0.3)
    calls = worker.wait_for(2)
    assert calls[1]["headers"]["ce-id"] == event["id"]
    assert _wait_health(relay)["pending"] == 0


def test_spawned_relay_stops_on_sigterm(prefix, subscribers, tmp_path):
    targets = {name: sub.url for name, sub in subscribers.items()}
    port = next(_relay_ports)
    pid = spawn(targets, manifests=MANIFESTS, port=port, redis_url=REDIS_URL, key_prefix=prefix)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    pytest.fail("the relay did not exit within 5 s of SIGTERM")


def test_ingress_errors_and_health(make_relay, subscribers):
    relay = make_relay()
    unknown = requests.post(relay.sink_url("no-such-sink"), data=b"{}", headers=to_binary(_event())[0], timeout=5)
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    malformed = requests.post(
        relay.sink_url("batch-chunks"), data=b'{"hello": 1}', headers={"content-type": "application/json"}, timeout=5
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"].startswith("malformed CloudEvent")
    assert _post(relay, _event()).status_code == 202
    subscribers["batch-worker"].wait_for(1)
    health = _wait_health(relay)
    assert health["status"] == "healthy"
    assert health["topics"] == {"test.batch.chunks": 1, "test.batch.requests": 0}
    scraped = requests.get(f"{relay.url}/metrics", timeout=5)
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    assert "kinfer_relay_up 1\n" in scraped.text
    assert 'kinfer_relay_topic_events{topic="test.batch.chunks"} 1\n' in scraped.text


def test_plain_record_on_a_topic_is_wrapped_like_kafkasource_does(make_relay, subscribers):
    relay = make_relay()
    record = {"EventName": "s3:ObjectCreated:Put", "Key": "kinfer-batch-inputs/job.jsonl"}
    resp = requests.post(f"{relay.url}/topics/test.batch.requests", json=record, timeout=5)
    assert resp.status_code == 202
    [call] = subscribers["batch-intake"].wait_for(1)
    assert call["headers"]["ce-type"] == "dev.knative.kafka.event"
    assert call["headers"]["ce-source"].endswith("/kafkasources/batch-intake-source#test.batch.requests")
    assert json.loads(call["body"]) == record


def _wait_health(relay: EventRelay, timeout: float = 3.0) -> dict[str, Any]:
    """/health once nothing is pending (acks land just after the subscriber answers)."""
    deadline = time.monotonic() + timeout
    while True:
        body = requests.get(f"{relay.url}/health", timeout=5).json()
        if body["pending"] == 0 or time.monotonic() > deadline:
            return body
        time.sleep(0.02)
