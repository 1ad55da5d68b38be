"""Async inference end to end on real services: PostgreSQL, Redis, the event relay (Redis Streams, as
knative/ wires the chunk topic to the batch worker) and Triton. The worker and dead-letter functions are
served over real HTTP for the relay; the infer function runs under functions-framework's test client.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from shared.batch import callbacks
from shared.batch.requests import AsyncRequests
from shared.clients.schema import infer_requests
from shared.localstack.relay.server import EventRelay
from shared.localstack.relay.wiring import Delivery, Subscription, Wiring
from shared.services import get_services, reset_services
from tests.conftest import free_port, function_client
from tests.integration.servers import InProcessServer

pytestmark = pytest.mark.integration
ROW = [5.1, 3.5, 1.4, 0.2]
SINK = "batch-chunks"
SECRET = "test-signing-secret"
ASYNC = {"Prefer": "respond-async"}


class Receiver:
    """A callback receiver on 127.0.0.1: records every POST; answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(outer.statuses.pop(0) if outer.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/hooks/kinfer?tenant=t1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 30) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.posts)


class Stack:
    def __init__(self, base: Any, triton: Any) -> None:
        self.uid = uuid.uuid4().hex[:8]
        self.base = base
        self.redis = redis.Redis.from_url(base.redis_url, socket_timeout=10)
        self.worker = InProcessServer("batch_worker", "process_batch_chunk")
        self.dead = InProcessServer("batch_deadletter", "fail_dead_chunk")
        topic = f"kinfer.batch.chunks.{self.uid}"
        sub = Subscription(
            name="batch-worker-source",
            namespace="kinfer",
            topics=(topic,),
            group="kinfer-batch-worker",
            sink=self.worker.url,
            delivery=Delivery(retry=3, backoff_delay_s=0.05, dead_letter=self.dead.url),
            initial_offset="earliest",
            ordering="unordered",
        )
        self.relay = EventRelay(
            self.redis,
            Wiring(sinks={SINK: topic}, subscriptions=(sub,)),
            port=free_port(),
            key_prefix=f"kinfer:test:async:{self.uid}:",
            workers=8,
        )
        self.relay.start()
        self.triton = triton
        self.receiver = Receiver()
        self.configure()
        self.api = function_client("infer", "run_inference")
        services = get_services()
        self.model = services.registry.create_model(
            {
                "name": f"async-iris-{self.uid}",
                "version": "1.0",
                "framework": "python",
                "format": "python",
                "backend_url": triton.grpc_url,
                "triton_model": "iris_classifier",
            }
        )["name"]

    def configure(self, **overrides: Any) -> Any:
        values = {
            "triton_url": self.triton.grpc_url,
            "k_sink": self.relay.sink_url(SINK),
            "callback_signing_secret": SECRET,
            "callback_allowlist": (f"127.0.0.1:{self.receiver.port}",),
            "request_wait_s": 5.0,
            **overrides,
        }
        settings = dataclasses.replace(self.base, **values)
        reset_services(settings)
        return settings

    def submit(self, body: dict[str, Any], headers: dict[str, str] | None = None, status: int = 202) -> Any:
        resp = self.api.post("/v1/infer", json=body, headers={**ASYNC, **(headers or {})})
        assert resp.status_code == status, resp.text
        return resp

    def get(self, request_id: str, headers: dict[str, str] | None = None) -> Any:
        return self.api.get(f"/v1/requests/{request_id}", headers=headers or {})

    def wait(self, request_id: str, timeout: float = 60, headers: dict[str, str] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            resp = self.get(request_id, headers)
            assert resp.status_code == 200, resp.text
            body = resp.json()
            if not seen or seen[-1] != body["status"]:
                seen.append(body["status"])
            if body["status"] in ("succeeded", "failed"):
                body["_seen"] = seen
                return body
            time.sleep(0.05)
        raise AssertionError(f"request {request_id} still {seen} after {timeout}s")

    def stop(self) -> None:
        self.relay.stop()
        self.worker.stop()
        self.dead.stop()
        self.receiver.server.shutdown()
        reset_services(None)
        for key in self.redis.scan_iter(f"kinfer:test:async:{self.uid}:*"):
            self.redis.delete(key)


@pytest.fixture(scope="module")
def stack(base_settings: Any, triton: Any) -> Iterator[Stack]:
    s = Stack(base_settings, triton)
    yield s
    s.stop()


@pytest.fixture
def st(stack: Stack) -> Stack:
    stack.configure()
    stack.receiver.posts.clear()
    stack.receiver.statuses.clear()
    return stack


def _without_timing(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("latency_ms", "timestamp", "request_id", "trace_id")}


def test_respond_async_answers_202_with_location_then_the_synchronous_body(st: Stack) -> None:
    body = {"model": st.model, "input": {"data": ROW}}
    sync = st.api.post("/v1/infer", json=body)
    assert sync.status_code == 200, sync.text
    resp = st.submit(body, {"X-Request-ID": "async-req-1"})
    accepted = resp.json()
    assert resp.headers["Location"] == f"/v1/requests/{accepted['id']}" == accepted["location"]
    assert resp.headers["Preference-Applied"] == "respond-async"
    assert accepted["status"] == "queued" and accepted["model"] == st.model and accepted["version"] == "1.0"
    done = st.wait(accepted["id"])
    assert done["status"] == "succeeded" and done["http_status"] == 200 and done["attempts"] == 1
    assert set(done["_seen"]) <= {"queued", "running", "succeeded"}
    assert done["created_at"] <= done["started_at"] <= done["finished_at"] < done["expires_at"]
    result = done["result"]
    assert set(result) == set(sync.json())  # exactly the fields of the synchronous answer
    assert _without_timing(result) == _without_timing(sync.json())
    assert result["prediction"] == "setosa" and result["request_id"] == "async-req-1"


def test_v2_route_async_gives_the_v2_answer(st: Stack) -> None:
    body = {"id": "v2-a", "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
    sync = st.api.post(f"/v2/models/{st.model}/infer", json=body)
    assert sync.status_code == 200, sync.text
    resp = st.api.post(f"/v2/models/{st.model}/versions/1.0/infer", json=body, headers=ASYNC)
    assert resp.status_code == 202, resp.text
    done = st.wait(resp.json()["id"])
    assert done["status"] == "succeeded" and done["protocol"] == "v2"
    assert done["result"] == sync.json()


def test_validation_happens_up_front(st: Stack) -> None:
    unknown = st.submit({"model": f"nope-{st.uid}", "input": {"data": ROW}}, status=404)
    assert unknown.json()["code"] == "not_found"
    assert st.submit({"model": st.model}, status=400).json()["field"] == "input"
    assert st.submit({"model": st.model, "input": {"data": ROW}, "extra": 1}, status=400).json()["field"] == "extra"
    v2_unknown = st.api.post(f"/v2/models/nope-{st.uid}/infer", json={"inputs": []}, headers=ASYNC)
    assert v2_unknown.status_code in (400, 404)
    binary = st.api.post(
        f"/v2/models/{st.model}/infer",
        content=b'{"inputs":[]}',
        headers={**ASYNC, "Inference-Header-Content-Length": "13", "Content-Type": "application/octet-stream"},
    )
    assert binary.status_code == 400 and "respond-async" in binary.json()["error"]
    assert st.get(str(uuid.uuid4())).status_code == 404
    assert st.get("not-a-uuid").status_code == 404
    with get_services().db.begin() as conn:  # nothing was stored for the refused requests
        names = conn.execute(sa.select(infer_requests.c.model_name)).scalars().all()
    assert f"nope-{st.uid}" not in names


def test_only_the_owning_key_or_an_admin_sees_a_request(st: Stack) -> None:
    keys = get_services().keys
    _, alice = keys.create_key(f"alice-{st.uid}", ["infer"])
    _, bob = keys.create_key(f"bob-{st.uid}", ["infer"])
    _, admin = keys.create_key(f"admin-{st.uid}", ["admin"])
    st.configure(auth_required=True)
    as_alice = {"Authorization": f"Bearer {alice}"}
    resp = st.submit({"model": st.model, "input": {"data": ROW}}, as_alice)
    request_id = resp.json()["id"]
    assert st.wait(request_id, headers=as_alice)["status"] == "succeeded"
    other = st.get(request_id, {"Authorization": f"Bearer {bob}"})
    assert other.status_code == 404 and other.json()["code"] == "not_found"  # 404, never 403: no id oracle
    assert st.get(request_id, {"Authorization": f"Bearer {admin}"}).status_code == 200
    assert st.get(request_id).status_code == 401


def test_expired_requests_answer_request_expired_then_are_gone(st: Stack) -> None:
    request_id = st.submit({"model": st.model, "input": {"data": ROW}}).json()["id"]
    st.wait(request_id)
    with get_services().db.begin() as conn:
        conn.execute(
            sa.update(infer_requests)
            .where(infer_requests.c.id == uuid.UUID(request_id))
            .values(expires_at=sa.func.now() - sa.text("interval '1 second'"))
        )
    expired = st.get(request_id)
    assert expired.status_code == 404 and expired.json()["code"] == "request_expired"
    assert "REQUEST_RETENTION_S" in expired.json()["error"]
    gone = st.get(request_id)
    assert gone.status_code == 404 and gone.json()["code"] == "not_found"


def test_callback_is_received_once_and_signed(st: Stack) -> None:
    st.receiver.statuses[:] = [500]  # the first POST fails: redelivered with backoff
    resp = st.submit({"model": st.model, "input": {"data": ROW}}, {"Kinfer-Callback-URL": st.receiver.url})
    request_id = resp.json()["id"]
    assert resp.json()["callback_url"] == st.receiver.url
    st.wait(request_id)
    posts = st.receiver.wait(2)
    time.sleep(1.0)  # nothing more arrives
    assert len(st.receiver.posts) == 2
    headers, body = posts[-1]
    assert headers["kinfer-request-id"] == request_id
    assert callbacks.verify(SECRET, headers["kinfer-signature"], body)
    assert not callbacks.verify("another-secret", headers["kinfer-signature"], body)
    delivered = json.loads(body)
    assert delivered["id"] == request_id and delivered["status"] == "succeeded"
    assert delivered["result"]["prediction"] == "setosa"
    deadline = time.monotonic() + 10
    while st.get(request_id).json()["callback"]["status"] != "delivered" and time.monotonic() < deadline:
        time.sleep(0.05)
    callback = st.get(request_id).json()["callback"]
    assert callback["status"] == "delivered" and callback["attempts"] == 2 and callback["error"] is None


def _callback_for(st: Stack, headers: dict[str, str]) -> tuple[str, dict[str, str], bytes]:
    """Submit one request with a callback as ``headers``'s key; the delivered callback's headers and body."""
    count = len(st.receiver.posts)
    resp = st.submit({"model": st.model, "input": {"data": ROW}}, {**headers, "Kinfer-Callback-URL": st.receiver.url})
    request_id = resp.json()["id"]
    st.wait(request_id, headers=headers)
    posts = st.receiver.wait(count + 1)
    assert len(posts) == count + 1
    return request_id, posts[-1][0], posts[-1][1]


def test_a_callback_is_signed_with_its_keys_own_secret_and_rotation_replaces_it(st: Stack) -> None:
    _, admin = get_services().keys.create_key(f"cb-admin-{st.uid}", ["admin"])
    st.configure(auth_required=True)
    keys_api = function_client("keys", "manage_api_keys")
    as_admin = {"Authorization": f"Bearer {admin}"}
    made = {}
    for name in ("alice", "bob"):
        resp = keys_api.post("/v1/keys", json={"name": f"{name}-cb-{st.uid}", "scopes": ["infer"]}, headers=as_admin)
        assert resp.status_code == 201, resp.text
        made[name] = resp.json()
        assert made[name]["callback_secret"].startswith("kcs_")
    alice, bob = made["alice"], made["bob"]
    assert alice["callback_secret"] != bob["callback_secret"]
    as_alice = {"Authorization": f"Bearer {alice['key']}"}
    request_id, headers, body = _callback_for(st, as_alice)
    signature = headers["kinfer-signature"]
    assert json.loads(body)["key_id"] == alice["id"] and headers["kinfer-request-id"] == request_id
    assert callbacks.verify(alice["callback_secret"], signature, body)
    assert not callbacks.verify(bob["callback_secret"], signature, body)  # another key's secret fails
    assert not callbacks.verify(SECRET, signature, body)  # so does the installation's
    # the database holds no secret: what a dump of api_keys gives signs nothing
    with get_services().db.begin() as conn:
        row = conn.execute(sa.text("SELECT * FROM api_keys WHERE id = :id"), {"id": alice["id"]}).mappings().one()
    assert not any(alice["callback_secret"] in str(value) for value in row.values())
    # rotation: by the key itself (self), never by another key, an admin's included
    as_bob = {"Authorization": f"Bearer {bob['key']}"}
    refused = keys_api.post(f"/v1/keys/{alice['id']}/callback-secret", headers=as_bob)
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    rotated = keys_api.post("/v1/keys/self/callback-secret", headers=as_alice)
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["callback_secret"]
    assert rotated.json()["id"] == alice["id"] and new_secret not in (alice["callback_secret"], bob["callback_secret"])
    _, headers, body = _callback_for(st, as_alice)
    assert callbacks.verify(new_secret, headers["kinfer-signature"], body)
    assert not callbacks.verify(alice["callback_secret"], headers["kinfer-signature"], body)  # the old one stops
    by_admin = keys_api.post(f"/v1/keys/{alice['id']}/callback-secret", headers=as_admin)
    assert by_admin.status_code == 403 and new_secret not in by_admin.text


def test_callback_dead_lettered_after_its_budget(st: Stack) -> None:
    st.receiver.statuses[:] = [503] * 10
    request_id = st.submit({"model": st.model, "input": {"data": ROW}}, {"Kinfer-Callback-URL": st.receiver.url})
    request_id = request_id.json()["id"]
    st.wait(request_id)
    deadline = time.monotonic() + 30
    while st.get(request_id).json()["callback"]["status"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.1)
    callback = st.get(request_id).json()["callback"]
    assert callback["status"] == "failed" and "callback delivery failed after all retries" in callback["error"]
    assert len(st.receiver.posts) == 4  # the first delivery and 3 retries


@pytest.mark.parametrize(
    "url",
    ["http://localhost:{port}/hook", "http://169.254.169.254/latest/meta-data", "http://10.1.2.3/x", "ftp://x/"],
)
def test_internal_callback_hosts_are_refused(st: Stack, url: str) -> None:
    resp = st.submit(
        {"model": st.model, "input": {"data": ROW}}, {"Kinfer-Callback-URL": url.format(port=free_port())}, 400
    )
    assert resp.json()["field"] == "callback_url"


def test_callback_without_a_signing_secret_is_refused_saying_what_to_set(st: Stack) -> None:
    st.configure(callback_signing_secret="")
    resp = st.submit({"model": st.model, "input": {"data": ROW}}, {"Kinfer-Callback-URL": st.receiver.url}, 409)
    assert "CALLBACK_SIGNING_SECRET" in resp.json()["error"]
    assert (resp.json()["code"], resp.json()["field"]) == ("callbacks_off", "callback_url")  # as the keys API
    sync = st.api.post(
        "/v1/infer", json={"model": st.model, "input": {"data": ROW}}, headers={"Kinfer-Callback-URL": "x"}
    )
    assert sync.status_code == 400 and "respond-async" in sync.json()["error"]


def test_redelivery_after_a_worker_failure_loses_nothing(st: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    real = AsyncRequests._run
    calls: list[str] = []

    async def crash_once(self: AsyncRequests, row: Any) -> Any:
        calls.append(str(row["id"]))
        if len(calls) == 1:
            raise RuntimeError("worker died mid-request")  # answered 503: the relay redelivers
        return await real(self, row)

    monkeypatch.setattr(AsyncRequests, "_run", crash_once)
    ids = [
        st.submit({"model": st.model, "input": {"data": ROW}}, {"Kinfer-Callback-URL": st.receiver.url}).json()["id"]
        for _ in range(5)
    ]
    done = [st.wait(i) for i in ids]
    assert all(d["status"] == "succeeded" and d["result"]["prediction"] == "setosa" for d in done)
    assert sorted(d["attempts"] for d in done) == [1, 1, 1, 1, 2]
    assert len(calls) == 6
    st.receiver.wait(5)
    time.sleep(1.0)
    assert sorted(h["kinfer-request-id"] for h, _ in st.receiver.posts) == sorted(ids)  # each result once


def test_a_redelivered_request_event_runs_once(st: Stack) -> None:
    from cloudevents.http import CloudEvent

    request_id = st.submit({"model": st.model, "input": {"data": ROW}}).json()["id"]
    first = st.wait(request_id)
    import asyncio

    event = CloudEvent(
        {"type": "dev.kinfer.infer.request.v1", "source": "/t", "id": f"{request_id}:request"},
        {"request_id": request_id},
    )
    status, answer = asyncio.run(get_services().requests.execute(event))
    assert status == 200 and answer["skipped"] == "request already succeeded"
    assert st.get(request_id).json() == {k: v for k, v in first.items() if k != "_seen"}


def test_a_key_has_a_bound_on_queued_requests_and_bodies(st: Stack) -> None:
    keys = get_services().keys
    record, secret = keys.create_key(f"bounded-{st.uid}", ["infer"])
    st.configure(auth_required=True, request_max_active=2, request_max_body_bytes=2048)
    as_key = {"Authorization": f"Bearer {secret}"}
    body = {"model": st.model, "input": {"data": ROW}}
    with get_services().db.begin() as conn:  # two requests of this key still queued (as behind a down backend)
        for _ in range(2):
            conn.execute(
                sa.insert(infer_requests).values(
                    id=uuid.uuid4(),
                    owner=str(record["id"]),
                    protocol="v1",
                    model_name=st.model,
                    model_version="1.0",
                    body=b"{}",
                    request_id="held",
                    trace_id="",
                    expires_at=sa.func.now() + sa.text("interval '1 hour'"),
                )
            )
    full = st.submit(body, as_key, status=429)
    assert "REQUEST_MAX_ACTIVE" in full.json()["error"] and full.headers["Retry-After"]
    assert "Preference-Applied" not in full.headers  # refused: the preference was not applied
    big = {"model": st.model, "input": {"data": [ROW] * 200}}
    too_big = st.submit(big, as_key, status=413)
    assert "REQUEST_MAX_BODY_BYTES" in too_big.json()["error"]
    other_record, other_secret = keys.create_key(f"unbounded-{st.uid}", ["infer"])
    as_other = {"Authorization": f"Bearer {other_secret}"}
    other = st.submit(body, as_other)  # another key is not bound by this one's queue
    assert st.wait(other.json()["id"], headers=as_other)["key_id"] == str(other_record["id"])
