"""The local stand-in for Knative's activator: Triton scales to zero on one machine.

In a cluster Triton is a Knative Service with min-scale 0: once traffic stops, its pod (Triton and
the model agent beside it) is removed, and Knative's activator holds the next request while a new
pod starts and becomes ready (the agent's ``/ready``: every version the registry wants loaded), then
forwards it, or gives up after its timeout. ``kinfer up --scale-to-zero`` (or
``KINFER_SCALE_TO_ZERO=1``) does the same locally, as the event relay stands in for Kafka:

- ``Activator`` listens on Triton's HTTP and gRPC ports (8000, 8001) and splices each connection
  to the real Triton on internal ports (18000, 18001);
- after ``LOCAL_SCALE_TO_ZERO_IDLE_S`` seconds without a byte through it (and no connection held)
  it stops the pod (``idle-stopped``): the spliced connections are closed, as a removed pod's are;
- the next connection starts the pod (``waking``) and is held, without a byte either way, until
  the pod is ready, then spliced (``serving``); a connection held ``LOCAL_ACTIVATOR_HOLD_S`` seconds
  is closed, as the activator's timeout would answer.

So the functions meet a cold start for real: their breakers, ``Prefer: wait`` and 503 with
``Retry-After`` run against a Triton that is not there. The pod is a ``Pod`` (``TritonPod`` here;
unit tests use a fake). The state is served on a status port (``GET /status``; ``POST /scale-to-zero``
stops the pod now) and, when a ``publish`` callback is given, written where ``GET /v1/backends`` reads
probe results, since nothing probes a Triton that scales to zero (PROBE_TRITON_URL=false).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol, TypedDict, TypeVar

log = logging.getLogger(__name__)

State = Literal["serving", "idle-stopped", "waking", "stopping"]
CHUNK = 64 * 1024
T = TypeVar("T")


class PodPids(TypedDict):
    triton: int | None
    agent: int | None


class ActivatorStatus(TypedDict):
    """``GET /status`` of the activator (and what ``kinfer status`` shows)."""

    state: State
    since: str  # when it entered that state (UTC, ISO 8601)
    connections: int  # spliced to Triton now
    held: int  # waiting for Triton to wake now
    wakes: int
    last_wake_s: float | None  # seconds the last wake took, connection to ready
    timeouts: int  # connections closed after the hold ran out
    idle_s: float
    hold_s: float
    error: str
    pids: PodPids


class Pod(Protocol):
    """Triton and its model agent, started and stopped together (one Knative pod). Blocking calls: the
    activator runs them in a thread."""

    def start(self) -> None: ...

    def ready(self) -> bool: ...

    def alive(self) -> bool: ...

    def stop(self) -> None: ...

    def pids(self) -> PodPids: ...


@dataclass(frozen=True)
class Route:
    """Connections to ``listen`` go to ``target`` (both on the activator's host)."""

    listen: int
    target: int


PORT_FREE_WAIT_S = 10.0  # how long a wake waits for the ports of the Triton it stopped


class WakeFailed(RuntimeError):
    """The pod did not start, or was not ready within the wake timeout."""


class Activator:
    """Holds connections while the pod is down, splices them once it is ready, stops it when idle."""

    def __init__(
        self,
        pod: Pod,
        routes: tuple[Route, ...],
        idle_s: float,
        hold_s: float,
        host: str = "127.0.0.1",
        status_port: int | None = None,
        publish: Callable[[ActivatorStatus], None] | None = None,
        tick_s: float | None = None,
        ready_poll_s: float = 0.1,
        wake_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pod = pod
        self.routes = routes
        self.idle_s, self.hold_s = idle_s, hold_s
        self.host, self.status_port = host, status_port
        self.publish = publish
        self.tick_s = tick_s if tick_s is not None else max(0.05, min(1.0, idle_s / 4))
        self.ready_poll_s = ready_poll_s
        self.wake_timeout_s = wake_timeout_s if wake_timeout_s is not None else max(hold_s, 60.0)
        self.clock = clock
        self.state: State = "idle-stopped"
        self.since = datetime.now(UTC).isoformat()
        self.last_activity = clock()
        self.held = 0
        self.wakes = 0
        self.timeouts = 0
        self.last_wake_s: float | None = None
        self.error = ""
        self._spliced: set[asyncio.StreamWriter] = set()
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._waking: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._publisher = ThreadPoolExecutor(1, thread_name_prefix="activator-publish")

    # -- life ------------------------------------------------------------------------------------
    async def start(self, awake: bool = True) -> None:
        """Listen on every route (and the status port); with ``awake``, start the pod (connections that come
        meanwhile are held, as on any wake)."""
        for route in self.routes:
            self._servers.append(
                await asyncio.start_server(
                    functools.partial(self._connection, target=route.target), self.host, route.listen
                )
            )
        if self.status_port is not None:
            self._servers.append(await asyncio.start_server(self._status_request, self.host, self.status_port))
        self._published()
        if awake:
            await self.wake()
        self._spawn(self._idle_loop())

    async def close(self) -> None:
        """Stop listening, close every connection and stop the pod."""
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._waking is not None:  # a start under way finishes before the stop (its thread cannot be cut)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._waking)
        self._cut()
        await asyncio.to_thread(self.pod.stop)
        self._set("idle-stopped")
        await asyncio.to_thread(self._publisher.shutdown)

    def status(self) -> ActivatorStatus:
        return {
            "state": self.state,
            "since": self.since,
            "connections": len(self._spliced),
            "held": self.held,
            "wakes": self.wakes,
            "last_wake_s": self.last_wake_s,
            "timeouts": self.timeouts,
            "idle_s": self.idle_s,
            "hold_s": self.hold_s,
            "error": self.error,
            "pids": self.pod.pids(),
        }

    # -- the state machine ---------------------------------------------------------------------------
    async def wake(self) -> None:
        """Return once the pod serves: start it (one start however many callers wait) unless it does."""
        while not (self.state == "serving" and self.pod.alive()):
            if self._waking is None:
                self._waking = asyncio.create_task(self._wake())
                self._waking.add_done_callback(_retrieved)  # every waiter may have given up
            waking = self._waking
            try:
                await asyncio.shield(waking)
            finally:
                if waking.done() and self._waking is waking:
                    self._waking = None

    async def _wake(self) -> None:
        async with self._lock:
            if self.state == "serving" and self.pod.alive():
                return
            self._set("waking")
            started = self.clock()
            try:
                await asyncio.to_thread(self.pod.start)
                while not await asyncio.to_thread(self.pod.ready):
                    if not self.pod.alive():
                        raise WakeFailed("Triton or its model agent exited while starting")
                    if self.clock() - started > self.wake_timeout_s:
                        raise WakeFailed(f"not ready within {self.wake_timeout_s:g}s")
                    await asyncio.sleep(self.ready_poll_s)
            except Exception as exc:
                self.error = f"wake failed: {exc}"[:300]
                log.error("activator: %s", self.error)
                await asyncio.to_thread(self.pod.stop)
                self._set("idle-stopped")
                raise WakeFailed(self.error) from exc
            self.wakes += 1
            self.last_wake_s = round(self.clock() - started, 3)
            self.error = ""
            self.last_activity = self.clock()
            self._set("serving")
            log.info("activator: Triton is serving again after %.2fs", self.last_wake_s)

    async def scale_to_zero(self, only_if_idle: bool = False) -> bool:
        """Stop the pod (closing spliced connections); with ``only_if_idle``, only when it still is idle."""
        async with self._lock:
            if self.state != "serving":
                return False
            if only_if_idle and not self._idle():
                return False
            idle = self.clock() - self.last_activity
            self._set("stopping")
            self._cut()
            try:
                await asyncio.to_thread(self.pod.stop)
            finally:
                self._set("idle-stopped")
            log.info("activator: Triton scaled to zero after %.1fs without traffic", idle)
            return True

    def _idle(self) -> bool:
        return self.held == 0 and self.clock() - self.last_activity >= self.idle_s

    async def _idle_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            if self.state == "serving" and not self.pod.alive():
                self.error = "Triton or its model agent exited; the next connection starts them"
                await self.scale_to_zero()
            elif self.state == "serving" and self._idle():
                await self.scale_to_zero(only_if_idle=True)

    def _set(self, state: State) -> None:
        if state != self.state:
            self.state, self.since = state, datetime.now(UTC).isoformat()
            self._published()

    def _published(self) -> None:
        if self.publish is None:
            return
        status = self.status()
        try:  # one thread: in order, and never on the event loop
            asyncio.get_running_loop().run_in_executor(self._publisher, self._publish, status)
        except RuntimeError:  # no loop: publish here
            self._publish(status)

    def _publish(self, status: ActivatorStatus) -> None:
        assert self.publish is not None
        try:
            self.publish(status)
        except Exception as exc:  # Redis down: the status port still tells
            log.warning("activator: could not publish its state: %s", type(exc).__name__)

    # -- connections ------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: int) -> None:
        self.held += 1
        self.last_activity = self.clock()
        try:
            try:
                await asyncio.wait_for(self.wake(), self.hold_s)
            except TimeoutError:
                self.timeouts += 1
                log.warning("activator: a connection held %.0fs while Triton woke was closed", self.hold_s)
                return
            except WakeFailed:
                return
            finally:
                self.held -= 1
                self.last_activity = self.clock()
            try:
                up_reader, up_writer = await asyncio.open_connection(self.host, target)
            except OSError as exc:
                log.warning("activator: Triton on port %d refused a connection: %s", target, exc)
                return
            self._spliced.update((writer, up_writer))
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                self._spliced.difference_update((writer, up_writer))
                _close(up_writer)
        finally:
            _close(writer)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(CHUNK):
                self.last_activity = self.clock()
                sink.write(data)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except (OSError, RuntimeError):  # reset, or closed by a scale-down
            _close(sink)

    def _cut(self) -> None:
        for writer in list(self._spliced):
            _close(writer)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the status port ------------------------------------------------------------------------------
    async def _status_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, path = (head.split(b"\r\n", 1)[0].decode("latin-1").split(" ") + ["", ""])[:2]
            body: dict[str, object] = {"error": f"no route for {method} {path[:100]}"}
            code = 404
            if method == "GET" and path in ("/status", "/health"):
                code, body = 200, {**self.status()}
            elif method == "POST" and path == "/scale-to-zero":
                stopped = await self.scale_to_zero()
                code, body = 200, {**self.status(), "stopped": stopped}
            data = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {code} {'OK' if code == 200 else 'Not Found'}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            _close(writer)


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


# -- the real pod: the local Triton and its model agent --------------------------------------------------
class TritonPod:
    """The stack's Triton (``TritonServer`` on internal ports) and the model agent beside it; ready is the
    agent's ``/ready`` (as Knative's readiness probe of the Triton pod), or Triton's when there is no agent."""

    def __init__(
        self,
        server: object,
        agent_cmd: list[str] | None = None,
        agent_env: dict[str, str] | None = None,
        agent_log: Path | None = None,
        agent_ready_url: str | None = None,
        start_timeout_s: float = 120.0,
    ) -> None:
        from shared.localstack.triton import TritonServer

        assert isinstance(server, TritonServer)
        self.server = server
        self.agent_cmd, self.agent_env, self.agent_log = agent_cmd, agent_env or {}, agent_log
        self.agent_ready_url = agent_ready_url
        self.start_timeout_s = start_timeout_s
        self._agent: int | None = None

    def start(self) -> None:
        from shared.localstack import procs

        if self.server.pid is None or not procs.alive(self.server.pid):
            from shared.localstack.triton import TritonStartError

            self.server.stop()
            deadline = time.monotonic() + PORT_FREE_WAIT_S
            while True:  # the Triton just stopped may still hold its ports for a moment
                try:
                    self.server.start(timeout=self.start_timeout_s, detach=True)
                    break
                except TritonStartError as exc:
                    if "already in use" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        if self.agent_cmd and not procs.alive(self._agent):
            assert self.agent_log is not None
            self._agent = procs.spawn(self.agent_cmd, self.agent_log, self.agent_env)

    def ready(self) -> bool:
        from shared.localstack import procs

        if self.agent_ready_url:
            return procs.http_ok(self.agent_ready_url)
        return bool(self.server.is_ready())

    def alive(self) -> bool:
        from shared.localstack import procs

        return procs.alive(self.server.pid) and (not self.agent_cmd or procs.alive(self._agent))

    def stop(self) -> None:
        from shared.localstack import procs

        if self._agent is not None:
            procs.stop(self._agent)
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                os.waitpid(self._agent, os.WNOHANG)  # our child: reap it
            self._agent = None
        self.server.stop()

    def pids(self) -> PodPids:
        from shared.localstack import procs

        return {
            "triton": self.server.pid if procs.alive(self.server.pid) else None,
            "agent": self._agent if procs.alive(self._agent) else None,
        }


class ActivatorThread:
    """An ``Activator`` on its own event loop in a thread of this process (tests, the cold-start benchmark)."""

    def __init__(self, activator: Activator, awake: bool = True, timeout: float = 120) -> None:
        import threading

        self.activator = activator
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="activator", daemon=True)
        self.thread.start()
        self.call(activator.start(awake=awake), timeout)

    def call(self, coro: Coroutine[object, object, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def scale_to_zero(self) -> bool:
        return self.call(self.activator.scale_to_zero())

    def close(self) -> None:
        self.call(self.activator.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def probe_record(backend: str, status: ActivatorStatus) -> dict[str, object]:
    """What ``GET /v1/backends`` shows of a Triton that scales to zero: the activator's state as a probe
    record (nothing else probes it). Scaled to zero is healthy (the next request wakes it); waking is not
    yet: ``state_since`` says since when, and ``wake_estimate_s`` how long the last wake took (None before
    the first), the estimate the console shows."""
    reason = {
        "serving": "serving (local activator)",
        "idle-stopped": "scaled to zero by the local activator: the next request wakes it",
        "waking": "waking: the local activator is starting Triton and holds requests until it is ready",
        "stopping": "scaling to zero (local activator)",
    }[status["state"]]
    estimate = status["last_wake_s"]
    if status["state"] == "waking" and estimate is not None:
        reason += f"; the last wake took {estimate:g} s"
    return {
        "url": backend,
        "healthy": status["state"] in ("serving", "idle-stopped"),
        "reason": reason + (f"; {status['error']}" if status["error"] else ""),
        "models": [],
        "models_not_ready": [],
        "last_checked": datetime.now(UTC).isoformat(),
        "latency_ms": 0.0,
        "state": status["state"],
        "state_since": status["since"],
        "wake_estimate_s": estimate,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m shared.localstack.activator --route 8000:18000 --route 8001:18001 ...``: started by
    ``kinfer up --scale-to-zero``; its environment is the model agent's."""
    from redis import Redis

    from shared.localstack.triton import TritonServer
    from shared.logs import setup_logging
    from shared.settings import LocalStackSettings, Settings

    p = argparse.ArgumentParser(description="Local stand-in for Knative's activator in front of Triton")
    p.add_argument("--route", action="append", default=[], help="LISTEN:TARGET (repeatable)")
    p.add_argument("--status-port", type=int, required=True)
    p.add_argument("--triton-ports", required=True, help="HTTP,GRPC,METRICS of the real Triton")
    p.add_argument("--repository", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--triton-log", required=True)
    p.add_argument("--agent-log", required=True)
    p.add_argument("--agent-ready", required=True, help="the agent's /ready URL")
    p.add_argument("--backend", required=True, help="the backend address callers use (host:port)")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    local = LocalStackSettings.from_env()
    setup_logging("activator", settings.log_level)
    http, grpc, metrics = (int(x) for x in args.triton_ports.split(","))
    server = TritonServer(
        Path(args.repository),
        Path(args.state_dir),
        http,
        grpc,
        metrics,
        log_path=Path(args.triton_log),
        load_models=(),
        strict_readiness=False,
    )
    pod = TritonPod(server, [sys.executable, "-m", "shared.cli", "agent"], None, Path(args.agent_log), args.agent_ready)
    redis = Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    key = f"kinfer:probe:{args.backend}"

    def publish(status: ActivatorStatus) -> None:
        redis.set(key, json.dumps(probe_record(args.backend, status)), ex=3600)

    routes = tuple(Route(*(int(x) for x in r.split(":", 1))) for r in args.route)
    activator = Activator(pod, routes, local.idle_s, local.hold_s, status_port=args.status_port, publish=publish)

    async def run() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        try:
            await activator.start(awake=True)
            log.info("activator: routes %s, idle %.0fs, hold %.0fs", args.route, local.idle_s, local.hold_s)
            await stopping.wait()
        finally:
            await activator.close()

    try:
        asyncio.run(run())
    except (WakeFailed, OSError) as exc:
        sys.stderr.write(f"activator: {exc}\n")
        return 1
    finally:
        with contextlib.suppress(Exception):  # gone with the activator: the functions' own view again
            redis.delete(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
