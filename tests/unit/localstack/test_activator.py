"""The scale-to-zero activator's state machine, with a fake pod: an echo server that starts slowly."""

from __future__ import annotations

import asyncio
import json
import socketserver
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from shared.localstack.activator import Activator, ActivatorStatus, PodPids, Route, probe_record
from tests.conftest import free_port


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    request_queue_size = 128
    daemon_threads = True
    block_on_close = False


class FakePod:
    """An echo server on ``port``; ready ``ready_after`` seconds after it starts (never, with None)."""

    def __init__(self, port: int, ready_after: float | None = 0.3) -> None:
        self.port, self.ready_after = port, ready_after
        self.starts = self.stops = 0
        self.started_at: float | None = None
        self.server: _Server | None = None

    def start(self) -> None:
        self.starts += 1
        self.server = _Server(("127.0.0.1", self.port), _Echo)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.started_at = time.monotonic()

    def ready(self) -> bool:
        return (
            self.started_at is not None
            and self.ready_after is not None
            and time.monotonic() - self.started_at >= self.ready_after
        )

    def alive(self) -> bool:
        return self.server is not None

    def stop(self) -> None:
        if self.server is not None:
            self.stops += 1
            self.server.shutdown()
            self.server.server_close()
        self.server, self.started_at = None, None

    def crash(self) -> None:
        self.stop()
        self.stops -= 1

    def pids(self) -> PodPids:
        return {"triton": 1 if self.server else None, "agent": None}


def run(
    scenario: Callable[[Activator, FakePod, int], Awaitable[None]],
    idle_s: float = 0.6,
    hold_s: float = 5.0,
    ready_after: float | None = 0.3,
    awake: bool = True,
    **kwargs: Any,
) -> tuple[Activator, FakePod]:
    listen, target = free_port(), free_port()
    pod = FakePod(target, ready_after)
    activator = Activator(pod, (Route(listen, target),), idle_s, hold_s, tick_s=0.05, ready_poll_s=0.02, **kwargs)

    async def main() -> None:
        await activator.start(awake=awake)
        try:
            await scenario(activator, pod, listen)
        finally:
            await activator.close()

    asyncio.run(main())
    return activator, pod


async def echo(port: int, payload: bytes = b"ping", timeout: float = 10) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
    finally:
        writer.close()


async def until(predicate: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_it_serves_then_stops_the_pod_after_the_idle_period_and_closes_what_was_spliced() -> None:
    async def scenario(a: Activator, pod: FakePod, port: int) -> None:
        assert a.state == "serving" and pod.starts == 1
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        assert a.status()["connections"] == 2  # both ends of the splice
        started = time.monotonic()
        await until(lambda: a.state == "idle-stopped")
        assert time.monotonic() - started >= 0.5  # not before idle_s without a byte
        assert pod.stops == 1 and not pod.alive()
        assert await asyncio.wait_for(reader.read(), 2) == b""  # the pod went away: so did the connection
        writer.close()

    run(scenario)


def test_bytes_keep_it_awake() -> None:
    async def scenario(a: Activator, pod: FakePod, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(8):  # 1.6 s of traffic, idle_s 0.6
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            await asyncio.sleep(0.2)
        assert a.state == "serving" and pod.stops == 0
        writer.close()

    run(scenario)


def test_the_next_connection_wakes_the_pod_once_and_is_held_until_it_is_ready() -> None:
    async def scenario(a: Activator, pod: FakePod, port: int) -> None:
        assert a.state == "idle-stopped" and pod.starts == 0
        started = time.monotonic()
        tasks = [asyncio.create_task(echo(port, f"c{i}".encode())) for i in range(10)]
        await until(lambda: a.state == "waking")
        assert a.status()["held"] == 10
        answers = await asyncio.gather(*tasks)
        assert answers == [f"c{i}".encode() for i in range(10)]
        assert time.monotonic() - started >= 0.3  # nobody got through before the pod was ready
        assert pod.starts == 1 and a.state == "serving" and a.wakes == 1
        assert a.last_wake_s is not None and a.last_wake_s >= 0.3

    run(scenario, awake=False)


def test_a_connection_during_a_scale_down_waits_for_it_and_wakes_the_pod_again() -> None:
    async def scenario(a: Activator, pod: FakePod, port: int) -> None:
        stopping = asyncio.create_task(a.scale_to_zero())
        await asyncio.sleep(0)
        assert await echo(port) == b"ping"
        assert await stopping
        assert pod.stops == 1 and pod.starts == 2 and a.state == "serving"

    run(scenario)


def test_a_connection_held_past_the_hold_is_closed_and_a_pod_never_ready_is_stopped() -> None:
    async def scenario(a: Activator, pod: FakePod, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
        assert 0.4 <= time.monotonic() - started < 3
        assert a.timeouts == 1
        await until(lambda: a.state == "idle-stopped" and pod.stops == 1)
        assert "not ready within" in a.error
        writer.close()

    run(scenario, hold_s=0.5, ready_after=None, awake=False, wake_timeout_s=1.0)


def test_a_pod_that_died_while_serving_is_started_again_by_the_next_connection() -> None:
    async def scenario(a: Activator, pod: FakePod, port: int) -> None:
        pod.crash()
        assert await echo(port) == b"ping"
        assert pod.starts == 2 and a.state == "serving"

    run(scenario, idle_s=30)


def test_the_status_port_tells_the_state_and_scales_to_zero_on_request() -> None:
    status_port = free_port()
    published: list[str] = []

    async def http(method: str, path: str) -> tuple[int, Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", status_port)
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        raw = await reader.read()
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    async def scenario(a: Activator, pod: FakePod, port: int) -> None:
        code, body = await http("GET", "/status")
        assert code == 200 and body["state"] == "serving" and body["pids"]["triton"] == 1
        code, body = await http("POST", "/scale-to-zero")
        assert code == 200 and body["stopped"] is True and body["state"] == "idle-stopped"
        assert (await http("GET", "/nope"))[0] == 404
        await until(lambda: published[-1:] == ["idle-stopped"])

    run(scenario, idle_s=30, status_port=status_port, publish=lambda s: published.append(s["state"]))
    assert published[:3] == ["idle-stopped", "waking", "serving"]


@pytest.mark.parametrize(
    ("state", "healthy", "says"),
    [("serving", True, "serving"), ("idle-stopped", True, "scaled to zero"), ("waking", False, "waking")],
)
def test_the_backends_overview_sees_the_state_as_a_probe_record(state: str, healthy: bool, says: str) -> None:
    status: ActivatorStatus = {
        "state": state,  # type: ignore[typeddict-item]
        "since": "",
        "connections": 0,
        "held": 0,
        "wakes": 0,
        "last_wake_s": None,
        "timeouts": 0,
        "idle_s": 1,
        "hold_s": 1,
        "error": "",
        "pids": {"triton": None, "agent": None},
    }
    record = probe_record("127.0.0.1:8001", status)
    assert record["healthy"] is healthy and says in str(record["reason"]) and record["url"] == "127.0.0.1:8001"


def test_kinfer_up_with_scale_to_zero_runs_the_activator_instead_of_triton_and_never_probes_triton() -> None:
    from shared.localstack import stack
    from shared.settings import LocalStackSettings, Settings

    assert "activator" in stack._expected_names(True) and "triton" not in stack._expected_names(True)
    assert {"triton", "agent"} <= set(stack._expected_names()) and "activator" not in stack._expected_names()
    assert stack.base_env(Settings.from_env(environ={}), scale_to_zero=True)["PROBE_TRITON_URL"] == "false"
    assert "PROBE_TRITON_URL" not in stack.base_env(Settings.from_env(environ={}))
    assert not LocalStackSettings.from_env(environ={}).scale_to_zero
    assert LocalStackSettings.from_env(environ={"KINFER_SCALE_TO_ZERO": "1"}).scale_to_zero


def test_kinfer_status_shows_triton_and_the_agent_in_the_activators_state(tmp_path: Any) -> None:
    from shared.localstack import stack

    stopped = stack._pod_rows(
        {
            "state": "idle-stopped",
            "since": "",
            "connections": 0,
            "held": 0,
            "wakes": 1,
            "last_wake_s": 2.5,
            "timeouts": 0,
            "idle_s": 60,
            "hold_s": 120,
            "error": "",
            "pids": {"triton": None, "agent": None},
        },
        tmp_path,
    )
    assert [(r["name"], r.get("state"), r["healthy"], r["pid"]) for r in stopped] == [
        ("triton", "idle-stopped", True, None),
        ("agent", "idle-stopped", True, None),
    ]
    unknown = stack._pod_rows(None, tmp_path)
    assert {r.get("state") for r in unknown} == {"unknown"} and not any(r["healthy"] for r in unknown)
