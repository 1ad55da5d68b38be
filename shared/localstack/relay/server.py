"""The local stand-in for KafkaSink + KafkaSource: CloudEvents over HTTP -> Redis Streams -> HTTP.

Ingress: ``POST /<namespace>/<kafkasink-name>`` (binary or structured mode; 202,
404 unknown sink, 400 malformed) appends the event to ``kinfer:relay:topic:<topic>``;
``POST /topics/<topic>`` appends a plain record the way MinIO's Kafka target writes
one. Delivery (``relay_delivery.Dispatcher``) follows the KafkaSources. The
ingress is a stdlib ``ThreadingHTTPServer``: one thread per connection with
HTTP/1.1 keep-alive is ample for a development relay, needs no worker processes
(so one process owns the consumer and its in-flight set) and stops cleanly in-process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import requests
from redis.exceptions import RedisError
from requests.adapters import HTTPAdapter

from shared.errors import InvalidInput
from shared.localstack.relay.delivery import Dispatcher, encode_event, encode_record, stream_key
from shared.localstack.relay.ping import PingTicker, load_pings
from shared.localstack.relay.wiring import Wiring, load_wiring
from shared.web.events import parse_event

log = logging.getLogger(__name__)

DEFAULT_MANIFESTS = Path(__file__).resolve().parents[3] / "knative" / "base"
KEY_PREFIX = "kinfer:relay:"


class RelayHealth(TypedDict):
    """The relay's ``GET /health``: each topic's length and the unacked count, or why it is unhealthy."""

    status: str
    topics: NotRequired[dict[str, int]]
    pending: NotRequired[int]
    error: NotRequired[str]


class EventRelay:
    """Ingress HTTP server plus one Dispatcher per KafkaSource; ``start()``/``stop()``."""

    def __init__(
        self,
        redis: Any,
        wiring: Wiring | str | Path,
        targets: Mapping[str, str] | None = None,
        *,
        port: int = 8090,
        host: str = "127.0.0.1",
        workers: int = 8,
        idle_timeout_s: float = 30.0,
        key_prefix: str = KEY_PREFIX,
        maxlen: int = 100_000,
        block_s: float = 0.5,
        http_timeout_s: float = 60.0,
    ) -> None:
        """``redis``'s socket timeout must exceed ``block_s``; a Wiring is used as is, a path is loaded."""
        self.redis, self.host, self.port = redis, host, port
        self.wiring = wiring if isinstance(wiring, Wiring) else load_wiring(wiring, targets or {})
        self.key_prefix, self.maxlen = key_prefix, maxlen
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_maxsize=max(workers, 1) * 2, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.dispatchers = [
            Dispatcher(
                redis,
                sub,
                key_prefix=key_prefix,
                consumer=self.consumer,
                session=self.session,
                workers=workers,
                idle_timeout_s=idle_timeout_s,
                block_s=block_s,
                http_timeout_s=http_timeout_s,
            )
            for sub in self.wiring.subscriptions
        ]
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def sink_url(self, sink: str, namespace: str = "kinfer") -> str:
        """The K_SINK URL of KafkaSink ``sink``."""
        return f"{self.url}/{namespace}/{sink}"

    def start(self) -> None:
        """Create the consumer groups, start delivering, then accept events."""
        for dispatcher in self.dispatchers:
            dispatcher.start()
        self._server = _IngressServer((self.host, self.port), _Handler, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="relay-ingress", daemon=True
        )
        self._thread.start()
        log.info(
            "event relay on %s: sinks %s, %d subscription(s)",
            self.url,
            sorted(self.wiring.sinks),
            len(self.dispatchers),
        )

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, then delivering (up to ``grace_s`` for deliveries in progress); unacked stay pending."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for dispatcher in self.dispatchers:
            dispatcher.request_stop()
        for dispatcher in self.dispatchers:
            dispatcher.stop(grace_s)
        self.session.close()

    def ingest(self, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, Mapping[str, object] | None]:
        """Append one POSTed event (or raw record) to its topic stream; the HTTP status and body."""
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        if len(parts) != 2:
            return 404, {"error": "POST /<namespace>/<kafkasink-name>", "code": "not_found"}
        if parts[0] == "topics" and parts[1] in self.wiring.topics():
            topic, fields = parts[1], self._record_fields(headers, body)
        elif parts[1] in self.wiring.sinks:
            topic = self.wiring.sinks[parts[1]]
            try:
                fields = encode_event(parse_event(headers, body))
            except InvalidInput as exc:
                return 400, exc.body()
        else:
            return 404, {"error": f"no KafkaSink named {parts[1]!r}", "code": "not_found"}
        try:
            self.redis.xadd(stream_key(self.key_prefix, topic), fields, maxlen=self.maxlen, approximate=True)
        except RedisError as exc:
            log.warning("relay: appending to %s failed: %s", topic, type(exc).__name__)
            return 503, {"error": "the event store (Redis) is unavailable", "code": "unavailable"}
        return 202, None

    @staticmethod
    def _record_fields(headers: Mapping[str, str], body: bytes) -> dict[str, bytes]:
        """A CloudEvent stays one; anything else is stored as a plain Kafka record."""
        try:
            return encode_event(parse_event(headers, body))
        except InvalidInput:
            return encode_record(body, headers.get("content-type", "application/json"))

    def health(self) -> tuple[int, RelayHealth]:
        """200 with each topic's length and the unacked count; 503 when Redis is down."""
        try:
            topics = {t: int(self.redis.xlen(stream_key(self.key_prefix, t))) for t in self.wiring.topics()}
            pending = sum(d.pending() for d in self.dispatchers)
        except RedisError:
            return 503, {"status": "unhealthy", "error": "Redis unavailable"}
        return 200, {"status": "healthy", "topics": topics, "pending": pending}

    def metrics(self) -> bytes:
        """``GET /metrics`` (Prometheus text): whether Redis answers, each topic's length, the unacked count."""
        status, health = self.health()
        lines = [
            "# HELP kinfer_relay_up 1 when the relay reaches Redis",
            "# TYPE kinfer_relay_up gauge",
            f"kinfer_relay_up {int(status == 200)}",
            "# HELP kinfer_relay_topic_events events kept in each topic (its Redis stream's length)",
            "# TYPE kinfer_relay_topic_events gauge",
            *(f'kinfer_relay_topic_events{{topic="{_label(t)}"}} {n}' for t, n in health.get("topics", {}).items()),
            "# HELP kinfer_relay_pending events delivered and not yet acknowledged",
            "# TYPE kinfer_relay_pending gauge",
            f"kinfer_relay_pending {health.get('pending', 0)}",
        ]
        return ("\n".join(lines) + "\n").encode()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _IngressServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, relay: EventRelay) -> None:
        self.relay = relay
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 64 * 1024  # headers and body leave in one segment (flushed after each request) ...
    disable_nagle_algorithm = True  # ... and at once: no Nagle / delayed-ACK stalls on keep-alive
    server: _IngressServer

    def do_POST(self) -> None:  # noqa: N802
        length = self.headers.get("content-length")
        if length is None:
            self._answer(411, {"error": "Content-Length is required", "code": "length_required"})
            return
        body = self.rfile.read(int(length))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self._answer(*self.server.relay.ingest(self.path, headers, body))

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._answer(*self.server.relay.health())
        elif path == "/metrics":
            data = self.server.relay.metrics()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._answer(404, {"error": "not found", "code": "not_found"})

    def _answer(self, status: int, body: Mapping[str, object] | None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("relay ingress: " + format, *args)


def parse_targets(items: list[str]) -> dict[str, str]:
    """``["batch-worker=http://127.0.0.1:8086/"]`` -> ``{"batch-worker": "http://127.0.0.1:8086/"}``."""
    targets = {}
    for item in items:
        name, sep, url = item.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise ValueError(f"--target must look like NAME=http://host:port/, not {item!r}")
        targets[name.strip()] = url.strip()
    return targets


def spawn(
    targets: Mapping[str, str],
    *,
    manifests: str | Path = DEFAULT_MANIFESTS,
    port: int = 8090,
    host: str = "127.0.0.1",
    redis_url: str | None = None,
    log_path: str | Path | None = None,
    workers: int = 8,
    idle_timeout_s: float = 30.0,
    key_prefix: str = KEY_PREFIX,
    timeout: float = 15.0,
) -> int:
    """Start a detached relay process (own session) and wait until /health answers; its pid."""
    cmd = [
        sys.executable,
        "-m",
        "shared.localstack.relay.server",
        "--host",
        host,
        "--port",
        str(port),
        "--manifests",
        str(manifests),
        "--workers",
        str(workers),
        "--idle-timeout",
        str(idle_timeout_s),
        "--key-prefix",
        key_prefix,
    ]
    cmd += [arg for name, url in targets.items() for arg in ("--target", f"{name}={url}")]
    if redis_url:
        cmd += ["--redis-url", redis_url]
    with open(log_path or os.devnull, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"http://{host}:{port}/health", timeout=0.5).status_code == 200:
                return proc.pid
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the event relay did not start on {host}:{port}; see {log_path or 'its output'}")


def main(argv: list[str] | None = None) -> int:
    """``python -m shared.localstack.relay.server --port 8090 --manifests knative/base --target NAME=URL ...``."""
    from redis import Redis

    from shared.logs import setup_logging
    from shared.settings import Settings

    parser = argparse.ArgumentParser(description="Local KafkaSink + KafkaSource stand-in (Redis Streams)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--manifests", default=str(DEFAULT_MANIFESTS))
    parser.add_argument("--target", action="append", default=[], help="SERVICE=URL (repeatable)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--idle-timeout", type=float, default=30.0)
    parser.add_argument("--key-prefix", default=KEY_PREFIX, help="Redis key prefix of the topic streams")
    parser.add_argument("--redis-url", default=None, help="default: REDIS_URL from the settings")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    setup_logging("event-relay", settings.log_level)
    redis = Redis.from_url(args.redis_url or settings.redis_url, socket_timeout=10, socket_connect_timeout=3)
    try:
        targets = parse_targets(args.target)
        relay = EventRelay(
            redis,
            args.manifests,
            targets,
            port=args.port,
            host=args.host,
            workers=args.workers,
            idle_timeout_s=args.idle_timeout,
            key_prefix=args.key_prefix,
        )
        ticker = PingTicker(load_pings(args.manifests, targets))
        relay.start()
        ticker.start()
    except (ValueError, OSError, RedisError) as exc:
        sys.stderr.write(f"event relay: {exc}\n")
        return 1
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    stopping.wait()
    ticker.stop()
    relay.stop()
    logging.shutdown()
    os._exit(0)  # don't let a delivery stuck past the grace period hold the process; it stays unacked


if __name__ == "__main__":
    sys.exit(main())
