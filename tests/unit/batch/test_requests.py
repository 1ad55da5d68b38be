"""Async inference requests with fakes: the Prefer header, callback policy and signature, and
``AsyncRequests`` over an in-memory store (no database, Triton or event sink)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cloudevents.http import CloudEvent

from shared.batch import callbacks
from shared.batch import request_store as store
from shared.batch import requests as areq
from shared.errors import Conflict, InvalidInput, NotFound, Unavailable
from shared.settings import Settings

ROW = [5.1, 3.5, 1.4, 0.2]


def test_prefers_async() -> None:
    assert areq.prefers_async("respond-async")
    assert areq.prefers_async("wait=10, Respond-Async ; x=1")
    assert not areq.prefers_async("wait=10") and not areq.prefers_async(None)


def test_signature_round_trip_and_tolerance() -> None:
    header = callbacks.sign("k", 1_700_000_000, b'{"a":1}')
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert callbacks.verify("k", header, b'{"a":1}', now=1_700_000_010)
    assert not callbacks.verify("k", header, b'{"a":2}', now=1_700_000_010)
    assert not callbacks.verify("k", header, b'{"a":1}', now=1_700_001_000)  # too old: no replay
    assert not callbacks.verify("k", "garbage", b"")


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        ("2606:4700::1111", True),
    ],
)
def test_only_global_addresses_are_public(address: str, public: bool) -> None:
    assert callbacks.is_public(address) is public


def policy(addresses: dict[str, list[str]], allow: tuple[str, ...] = (), secret: str = "s") -> callbacks.CallbackPolicy:
    return callbacks.CallbackPolicy(allow, secret, resolve=lambda host, port: addresses.get(host, []))


def test_policy_checks_every_address_unless_allow_listed() -> None:
    p = policy({"hooks.example.com": ["93.184.216.34"], "sneaky.example.com": ["93.184.216.34", "10.0.0.5"]})
    assert p.check("https://hooks.example.com/x") == "https://hooks.example.com/x"
    with pytest.raises(InvalidInput, match="not a public host"):
        p.check("https://sneaky.example.com/x")  # one internal answer is enough to refuse
    internal = policy({"receiver.kinfer.svc": ["10.0.0.9"]}, allow=("*.kinfer.svc:8080",))
    assert internal.check("http://receiver.kinfer.svc:8080/hook")
    with pytest.raises(InvalidInput):
        internal.check("http://receiver.kinfer.svc:9090/hook")  # the pattern names the port


@pytest.mark.parametrize("url", ["ftp://h/x", "http://user:pw@h/x", "http:///x", "https://h/x#f", " http://h/"])
def test_policy_refuses_malformed_urls(url: str) -> None:
    with pytest.raises(InvalidInput):
        policy({"h": ["8.8.8.8"]}).check(url)


@pytest.mark.parametrize("url", ["http://1.1.1.1/a b", "http://h/x\r\nX-Evil: 1", "http://h/\tx", "http://h/x\x7f"])
def test_policy_refuses_whitespace_and_control_characters_at_submit(url: str) -> None:
    with pytest.raises(InvalidInput, match="spaces or control characters") as refused:
        policy({"h": ["8.8.8.8"], "1.1.1.1": ["1.1.1.1"]}).check(url)
    assert refused.value.field == "callback_url"
    assert policy({"h": ["8.8.8.8"]}).check("http://h/a%20b") == "http://h/a%20b"


def test_policy_without_a_secret_says_what_to_set_as_the_keys_api_does() -> None:
    with pytest.raises(Conflict, match="CALLBACK_SIGNING_SECRET") as off:
        policy({}, secret="").check("https://hooks.example.com/")
    assert (off.value.status, off.value.code, off.value.field) == (409, "callbacks_off", "callback_url")


def test_delivery_rechecks_the_host_at_delivery_time() -> None:
    addresses = {"hooks.example.com": ["93.184.216.34"]}
    p = policy(addresses)
    p.check("https://hooks.example.com/")
    addresses["hooks.example.com"] = ["127.0.0.1"]  # DNS now points inside
    with pytest.raises(callbacks.CallbackRefused):
        p.deliver("https://hooks.example.com/", "id", b"{}")


# -- AsyncRequests over an in-memory store --------------------------------------------------------


class FakeDB:
    @contextmanager
    def begin(self) -> Iterator[None]:
        yield None


class MemoryStore:
    """The functions of ``request_store`` the domain calls, over a dict."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, dict[str, Any]] = {}

    def active_of(self, conn: Any, owner: str) -> int:
        return sum(1 for r in self.rows.values() if r["owner"] == owner and r["status"] in ("queued", "running"))

    def insert(self, conn: Any, values: dict[str, Any], retention_s: int) -> dict[str, Any]:
        now = datetime.now(UTC)
        row = {
            **values,
            "status": store.QUEUED,
            "attempts": 0,
            "http_status": None,
            "result": None,
            "error": None,
            "callback_attempts": 0,
            "callback_error": None,
            "created_at": now,
            "started_at": None,
            "finished_at": None,
            "callback_at": None,
            "expires_at": now + timedelta(seconds=retention_s),
            "expired": False,
        }
        self.rows[values["id"]] = row
        return dict(row)

    def get(self, conn: Any, request_id: uuid.UUID, owner: str | None = None) -> dict[str, Any] | None:
        row = self.rows.get(request_id)
        return dict(row) if row and (owner is None or row["owner"] == owner) else None

    def delete(self, conn: Any, request_id: uuid.UUID) -> None:
        self.rows.pop(request_id, None)

    def start(self, conn: Any, request_id: uuid.UUID) -> dict[str, Any] | None:
        row = self.rows.get(request_id)
        if row is None or row["status"] in store.FINAL:
            return None
        row.update(status=store.RUNNING, attempts=row["attempts"] + 1, started_at=datetime.now(UTC))
        return dict(row)

    def requeue(self, conn: Any, request_id: uuid.UUID) -> None:
        self.rows[request_id]["status"] = store.QUEUED

    def finish(self, conn: Any, request_id: uuid.UUID, status: str, http: int, body: Any, ret: int) -> Any:
        row = self.rows[request_id]
        if row["status"] in store.FINAL:
            return None
        row.update(status=status, http_status=http, finished_at=datetime.now(UTC))
        row["result" if status == store.SUCCEEDED else "error"] = body
        return dict(row)

    def purge_expired(self, conn: Any, limit: int = 100) -> int:
        return 0

    def set_callback(self, conn: Any, request_id: uuid.UUID, status: str, *, only_from: Any, error: Any = None) -> bool:
        row = self.rows[request_id]
        if row["callback_status"] not in only_from:
            return False
        row["callback_status"] = status
        row["callback_error"] = error if error is not None else row["callback_error"]
        return True

    def callback_attempted(self, conn: Any, request_id: uuid.UUID, error: Any) -> None:
        self.rows[request_id]["callback_attempts"] += 1
        self.rows[request_id]["callback_error"] = error


class FakeResolver:
    async def resolve_async(self, name: str, version: str | None, route_key: str | None) -> dict[str, str]:
        if name != "iris":
            raise NotFound(f"model {name!r} not found")
        return {"name": "iris", "version": "3"}


class FakeDataPlane:
    def __init__(self) -> None:
        self.failures: list[Exception] = []
        self.calls: list[tuple[Any, float]] = []
        self.callers: list[tuple[str | None, str | None]] = []

    async def run_inference(
        self, body: Any, route_key: Any, wait_s: float, key_id: str | None = None
    ) -> dict[str, Any]:
        from shared.logs import request_id_var

        self.calls.append((body, wait_s))
        self.callers.append((key_id, request_id_var.get()))
        if self.failures:
            raise self.failures.pop(0)
        return {"model": "iris", "version": body["version"], "prediction": "setosa", "outputs": {}}


class FakePolicy:
    def __init__(self) -> None:
        self.delivered: list[tuple[str, str, bytes]] = []
        self.secrets: list[str | None] = []
        self.fail_with: Exception | None = None

    def check(self, url: str) -> str:
        return url

    def secret_for(self, owner: str) -> str:
        return f"secret-of-{owner}"

    def deliver(self, url: str, request_id: str, body: bytes, secret: str | None = None) -> int:
        if self.fail_with is not None:
            raise self.fail_with
        self.delivered.append((url, request_id, body))
        self.secrets.append(secret)
        return 200


@pytest.fixture
def memory(monkeypatch: pytest.MonkeyPatch) -> MemoryStore:
    mem = MemoryStore()
    for name in ("active_of", "insert", "get", "delete", "start", "requeue", "finish", "purge_expired", "set_callback"):
        monkeypatch.setattr(store, name, getattr(mem, name))
    monkeypatch.setattr(store, "callback_attempted", mem.callback_attempted)
    return mem


class World:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, str]]] = []
        self.emit_fails = False
        self.dataplane = FakeDataPlane()
        self.policy = FakePolicy()

        def emit(event_type: str, event_id: str, data: Any) -> None:
            if self.emit_fails:
                raise Unavailable("sink down")
            self.events.append((event_type, event_id, dict(data)))

        settings = Settings.from_env(environ={}, request_wait_s=7.0)
        self.requests = areq.AsyncRequests(
            FakeDB(),
            FakeResolver(),
            self.dataplane,
            None,
            self.policy,
            emit,
            settings,  # type: ignore[arg-type]
        )

    def accept(self, body: bytes, callback_url: str | None = None, owner: str = "k1") -> areq.Accepted:
        return asyncio.run(
            self.requests.accept(
                areq.V1, body, {}, owner=owner, route_key=None, request_id="r-1", callback_url=callback_url
            )
        )

    def event(self, kind: str = "dev.kinfer.infer.request.v1") -> CloudEvent:
        event_type, event_id, data = next(e for e in reversed(self.events) if e[0] == kind)
        return CloudEvent({"type": event_type, "source": "/t", "id": event_id}, data)


@pytest.fixture
def world(memory: MemoryStore) -> World:
    return World()


def test_accept_pins_the_version_stores_and_emits(world: World, memory: MemoryStore) -> None:
    accepted = world.accept(b'{"model": "iris", "version": "production", "input": {"data": [1]}}')
    assert accepted["status"] == "queued" and accepted["version"] == "3"
    assert accepted["location"] == f"/v1/requests/{accepted['id']}"
    row = memory.rows[uuid.UUID(accepted["id"])]
    assert b'"version":"3"' in row["body"] and row["owner"] == "k1"
    assert world.events == [
        ("dev.kinfer.infer.request.v1", f"{accepted['id']}:request", {"request_id": accepted["id"]})
    ]


def test_unknown_model_and_bad_bodies_store_nothing(world: World, memory: MemoryStore) -> None:
    with pytest.raises(NotFound):
        world.accept(b'{"model": "nope", "input": {"data": [1]}}')
    for body in (b"[1]", b'{"model": "iris"}', b'{"model": "iris", "input": {}, "x": 1}', b"{"):
        with pytest.raises(InvalidInput):
            world.accept(body)
    assert memory.rows == {} and world.events == []


def test_a_sink_failure_leaves_nothing_stored(world: World, memory: MemoryStore) -> None:
    world.emit_fails = True
    with pytest.raises(Unavailable, match="nothing was stored"):
        world.accept(b'{"model": "iris", "input": {"data": [1]}}')
    assert memory.rows == {}


def test_execute_succeeds_once_with_the_request_ids(world: World, memory: MemoryStore) -> None:
    accepted = world.accept(b'{"model": "iris", "input": {"data": [1]}}')
    status, answer = asyncio.run(world.requests.execute(world.event()))
    assert (status, answer["status"]) == (200, "succeeded")
    assert world.dataplane.calls[0][1] == 7.0  # REQUEST_WAIT_S
    got = world.requests.get(accepted["id"], "k1")
    assert got["result"] == {
        "model": "iris",
        "version": "3",
        "prediction": "setosa",
        "outputs": {},
        "request_id": "r-1",
    }
    again = asyncio.run(world.requests.execute(world.event()))
    assert again[1]["skipped"] == "request already succeeded" and len(world.dataplane.calls) == 1
    # run as its caller's: the capture record of an async request names its key and its request id
    assert world.dataplane.callers == [("k1", "r-1")]


def test_retryable_failures_raise_and_requeue_permanent_ones_fail(world: World, memory: MemoryStore) -> None:
    accepted = world.accept(b'{"model": "iris", "input": {"data": [1]}}')
    world.dataplane.failures = [Unavailable("Triton is waking"), InvalidInput("input has 5 values", field="input")]
    with pytest.raises(Unavailable):
        asyncio.run(world.requests.execute(world.event()))
    assert world.requests.get(accepted["id"], "k1")["status"] == "queued"
    asyncio.run(world.requests.execute(world.event()))
    got = world.requests.get(accepted["id"], None)
    assert got["status"] == "failed" and got["http_status"] == 400 and got["attempts"] == 2
    assert got["error"] == {
        "error": "input has 5 values",
        "code": "invalid_input",
        "field": "input",
        "request_id": "r-1",
    }


def test_get_is_owner_scoped_and_expiry_is_request_expired(world: World, memory: MemoryStore) -> None:
    accepted = world.accept(b'{"model": "iris", "input": {"data": [1]}}')
    with pytest.raises(NotFound) as other:
        world.requests.get(accepted["id"], "someone-else")
    assert other.value.code == "not_found"
    memory.rows[uuid.UUID(accepted["id"])]["expired"] = True
    with pytest.raises(NotFound) as expired:
        world.requests.get(accepted["id"], "k1")
    assert expired.value.code == "request_expired" and memory.rows == {}


def test_callback_flow_redelivery_and_dead_letter(world: World, memory: MemoryStore) -> None:
    accepted = world.accept(b'{"model": "iris", "input": {"data": [1]}}', callback_url="https://h/x")
    asyncio.run(world.requests.execute(world.event()))
    assert world.events[-1][0] == "dev.kinfer.infer.callback.v1"
    world.policy.fail_with = Unavailable("callback to h answered 500")
    with pytest.raises(Unavailable):
        world.requests.deliver_callback(world.event("dev.kinfer.infer.callback.v1"))
    world.policy.fail_with = None
    world.requests.deliver_callback(world.event("dev.kinfer.infer.callback.v1"))
    world.requests.deliver_callback(world.event("dev.kinfer.infer.callback.v1"))  # redelivered: not sent again
    assert len(world.policy.delivered) == 1
    url, request_id, body = world.policy.delivered[0]
    assert (url, request_id) == ("https://h/x", accepted["id"]) and b'"status":"succeeded"' in body
    assert world.policy.secrets == ["secret-of-k1"]  # signed with the secret of the key that sent it
    got = world.requests.get(accepted["id"], "k1")["callback"]
    assert got["status"] == "delivered" and got["attempts"] == 2
    # a second request whose callback runs out of deliveries
    second = world.accept(b'{"model": "iris", "input": {"data": [1]}}', callback_url="https://h/y")
    asyncio.run(world.requests.execute(world.event()))
    world.requests.fail_dead(world.event("dev.kinfer.infer.callback.v1"), "callback delivery failed")
    assert world.requests.get(second["id"], "k1")["callback"]["status"] == "failed"


def test_a_callback_whose_event_was_not_sent_goes_out_on_redelivery(world: World, memory: MemoryStore) -> None:
    world.accept(b'{"model": "iris", "input": {"data": [1]}}', callback_url="https://h/x")
    request_event = world.event()
    real_emit = world.requests.emit

    def down(*args: Any) -> None:
        raise Unavailable("sink down")

    world.requests.emit = down
    with pytest.raises(Unavailable):
        asyncio.run(world.requests.execute(request_event))  # the outcome is stored, its callback not queued
    world.requests.emit = real_emit
    _, answer = asyncio.run(world.requests.execute(request_event))
    assert answer["skipped"] == "request already succeeded"
    assert world.events[-1][0] == "dev.kinfer.infer.callback.v1"


def test_a_dead_lettered_request_fails_with_the_reason(world: World, memory: MemoryStore) -> None:
    accepted = world.accept(b'{"model": "iris", "input": {"data": [1]}}')
    world.requests.fail_dead(world.event(), "request delivery failed after all retries (last status 503)")
    got = world.requests.get(accepted["id"], "k1")
    assert got["status"] == "failed" and got["http_status"] == 503 and got["error"]["code"] == "unavailable"


def test_a_dead_letter_of_a_request_carries_no_delivery_text_and_only_an_http_status() -> None:
    import base64
    import json as _json

    from cloudevents.http import CloudEvent

    from shared.batch.worker import dead_reason

    event = CloudEvent(
        {
            "type": "dev.kinfer.infer.request.v1",
            "source": "/x",
            "knativeerrorcode": "418",
            "knativeerrordata": base64.b64encode(_json.dumps({"error": "visit http://evil.example"}).encode()).decode(),
        },
        {"request_id": "x"},
    )
    assert "evil" not in dead_reason(event, "request")
    assert dead_reason(event, "request").endswith("(last status 418)")
    event["knativeerrorcode"] = "your key is compromised"
    assert dead_reason(event, "request") == "request delivery failed after all retries (no response)"


def test_a_refused_callback_host_names_no_internal_address_and_6to4_is_judged_by_its_ipv4() -> None:
    from shared.batch.callbacks import CallbackPolicy, is_public
    from shared.errors import InvalidInput

    policy = CallbackPolicy((), "s3cret", resolve=lambda host, port: ["10.1.2.3"])
    try:
        policy.check("https://internal.example.com/hook")
    except InvalidInput as exc:
        assert "10.1.2.3" not in exc.message and "not a public host" in exc.message
    else:
        raise AssertionError("an internal host was accepted")
    assert not is_public("2002:7f00:1::") and is_public("2002:808:808::")  # 6to4 of 127.0.0.1 / 8.8.8.8


def test_a_callback_is_signed_with_its_keys_own_secret_and_refused_when_the_key_is_gone() -> None:
    from shared.batch.callbacks import CallbackPolicy, CallbackRefused

    own = {"k1": "kcs_one", "k2": "kcs_two"}
    policy = CallbackPolicy((), "master", resolve=lambda host, port: ["8.8.8.8"], secret_of=own.get)
    assert policy.secret_for("k1") == "kcs_one" and policy.secret_for("k2") == "kcs_two"
    assert policy.secret_for("anonymous") == "master"  # sent without a key (AUTH_REQUIRED off)
    with pytest.raises(CallbackRefused, match="no longer exists"):
        policy.secret_for("k3")


def test_events_name_a_request_only_never_its_owner_and_an_unknown_one_creates_no_work(
    world: World, memory: MemoryStore
) -> None:
    world.accept(b'{"model": "iris", "input": {"data": [1]}}', callback_url="https://h/x", owner="k1")
    stored = world.event()
    forged = CloudEvent(
        {"type": stored["type"], "source": "/forged", "id": "f1"},
        {**stored.data, "owner": "k2", "key_id": "k2", "callback_url": "https://evil/x"},
    )
    asyncio.run(world.requests.execute(forged))
    callback = world.event("dev.kinfer.infer.callback.v1")
    world.requests.deliver_callback(
        CloudEvent({"type": callback["type"], "source": "/forged", "id": "f2"}, {**callback.data, "owner": "k2"})
    )
    (url, _, body), secret = world.policy.delivered[0], world.policy.secrets[0]
    assert (url, secret) == ("https://h/x", "secret-of-k1") and b'"key_id":"k1"' in body  # the row's owner
    unknown = CloudEvent({"type": stored["type"], "source": "/forged", "id": "f3"}, {"request_id": str(uuid.uuid4())})
    status, answer = asyncio.run(world.requests.execute(unknown))
    assert (status, answer["skipped"]) == (200, "unknown or expired request")
    assert world.requests.fail_dead(unknown, "x")[1]["skipped"] == "unknown or already finished"
    assert len(world.dataplane.calls) == 1  # only the stored request ran
