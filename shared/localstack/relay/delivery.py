"""Delivery half of the event relay: one ``Dispatcher`` per KafkaSource.

It reads the topic streams with a Redis consumer group (the KafkaSource's
consumerGroup), POSTs each event in binary mode to the subscriber from a thread
pool (``unordered``: up to ``workers`` at once; ``ordered``: one at a time, as
Knative does per partition, and a local topic stream is one partition),
retries as the delivery spec says, hands failures to the dead-letter sink
with Knative's ``knativeerror*`` extensions, then XACKs. Entries a crashed relay
never acked are reclaimed with XAUTOCLAIM after ``idle_timeout_s``: at-least-once.
"""

from __future__ import annotations

import base64
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from cloudevents.conversion import to_binary, to_json
from cloudevents.http import CloudEvent, from_json
from redis.exceptions import RedisError, ResponseError

from shared.localstack.relay.wiring import Subscription, is_retryable

log = logging.getLogger(__name__)

KAFKA_EVENT_TYPE = "dev.knative.kafka.event"
ERROR_DATA_LIMIT = 1024
STALE_CONSUMER_MS = 3_600_000


def stream_key(prefix: str, topic: str) -> str:
    return f"{prefix}topic:{topic}"


def encode_event(event: CloudEvent) -> dict[str, bytes]:
    """Stream fields of a CloudEvent (all attributes, extensions and data, as structured JSON)."""
    return {"event": to_json(event)}


def encode_record(body: bytes, content_type: str) -> dict[str, bytes]:
    """Stream fields of a plain Kafka record (not a CloudEvent), like MinIO's bucket notifications."""
    return {"raw": body, "ct": (content_type or "application/json").encode()}


def _field(fields: dict[Any, Any], name: str) -> Any:
    return fields.get(name.encode(), fields.get(name))


def decode_entry(fields: dict[Any, Any], sub: Subscription, topic: str, entry_id: str) -> CloudEvent:
    """The CloudEvent of a stream entry; a raw record is wrapped the way KafkaSource does it."""
    stored = _field(fields, "event")
    if stored is not None:
        return from_json(stored)
    content_type = _field(fields, "ct") or b"application/json"
    content_type = content_type.decode() if isinstance(content_type, bytes) else content_type
    return CloudEvent(
        {
            "type": KAFKA_EVENT_TYPE,
            "source": f"/apis/v1/namespaces/{sub.namespace}/kafkasources/{sub.name}#{topic}",
            "subject": f"partition:0#{entry_id}",
            "id": f"partition:0/offset:{entry_id}",
            "datacontenttype": content_type,
        },
        bytes(_field(fields, "raw") or b""),
    )


@dataclass(frozen=True)
class Outcome:
    """How the last attempt of a delivery ended (status None: no response)."""

    ok: bool
    status: int | None = None
    body: bytes = b""
    url: str = ""
    abandoned: bool = False


class Dispatcher:
    """Delivers the topics of one Subscription to its sink, in parallel, with retries and DLQ."""

    def __init__(
        self,
        redis: Any,
        sub: Subscription,
        *,
        key_prefix: str,
        consumer: str,
        session: requests.Session,
        workers: int = 8,
        idle_timeout_s: float = 30.0,
        block_s: float = 0.5,
        http_timeout_s: float = 60.0,
    ) -> None:
        self.redis, self.sub, self.consumer, self.session = redis, sub, consumer, session
        self.keys = {stream_key(key_prefix, t): t for t in sub.topics}
        self.workers = workers if sub.ordering == "unordered" else 1
        self.idle_timeout_s, self.block_s = idle_timeout_s, block_s
        self.http_timeout_s = sub.delivery.timeout_s or http_timeout_s
        self._stop = threading.Event()
        self._in_flight: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pool: ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []

    def ensure_groups(self) -> None:
        """Create the consumer group on every topic stream (kept across restarts)."""
        start = "0" if self.sub.initial_offset == "earliest" else "$"
        for key in self.keys:
            try:
                self.redis.xgroup_create(key, self.sub.group, id=start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._forget_old_consumers(key)

    def _forget_old_consumers(self, key: str) -> None:
        """Drop consumers of earlier relay runs that hold nothing and idled an hour (each run adds one)."""
        for consumer in self.redis.xinfo_consumers(key, self.sub.group):
            if int(consumer["pending"]) == 0 and int(consumer["idle"]) > STALE_CONSUMER_MS:
                self.redis.xgroup_delconsumer(key, self.sub.group, consumer["name"])

    def start(self) -> None:
        self.ensure_groups()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"relay-{self.sub.name}")
        for target, name in ((self._read_loop, "read"), (self._reclaim_loop, "reclaim")):
            thread = threading.Thread(target=target, name=f"relay-{self.sub.name}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def request_stop(self) -> None:
        """Stop reading and retrying now, without waiting."""
        self._stop.set()

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop reading and wait up to ``grace_s`` for deliveries in progress; the rest stay unacked."""
        self.request_stop()
        for thread in self._threads:
            thread.join(timeout=self.block_s + 5)
        self._threads.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            with self._cond:
                if not self._cond.wait_for(lambda: not self._in_flight, timeout=grace_s):
                    log.warning(
                        "relay %s: %d delivery(ies) still running at stop; they will be redelivered",
                        self.sub.name,
                        len(self._in_flight),
                    )

    def pending(self) -> int:
        """Entries delivered to the group but not yet acknowledged."""
        total = 0
        for key in self.keys:
            try:
                total += int(self.redis.xpending(key, self.sub.group)["pending"])
            except ResponseError:
                continue
        return total

    def _free_slots(self) -> int:
        """Wait (up to block_s) until fewer than ``workers`` deliveries are in flight; how many more fit."""
        with self._cond:
            self._cond.wait_for(
                lambda: len(self._in_flight) < self.workers or self._stop.is_set(), timeout=self.block_s
            )
            return max(self.workers - len(self._in_flight), 0)

    def _read_loop(self) -> None:
        streams = {key: ">" for key in self.keys}
        while not self._stop.is_set():
            free = self._free_slots()
            if not free:
                continue
            try:
                batches = (
                    self.redis.xreadgroup(
                        self.sub.group, self.consumer, streams, count=min(free, 32), block=int(self.block_s * 1000)
                    )
                    or []
                )
            except RedisError as exc:
                log.warning("relay %s: reading the streams failed: %s", self.sub.name, type(exc).__name__)
                self._stop.wait(1.0)
                continue
            self._submit_all(batches)

    def _submit_all(self, batches: Any) -> None:
        for key, entries in batches:
            for entry_id, fields in entries:
                self._submit(_text(key), _text(entry_id), fields)

    def _submit(self, key: str, entry_id: str, fields: dict[Any, Any]) -> None:
        """Queue one delivery on the pool and count it in flight."""
        with self._lock:
            self._in_flight.add((key, entry_id))
        assert self._pool is not None
        self._pool.submit(self._deliver, key, entry_id, fields)

    def _reclaim_loop(self) -> None:
        interval = max(self.idle_timeout_s / 2, 0.05)
        while not self._stop.wait(interval):
            for key in self.keys:
                try:
                    self._reclaim(key)
                except RedisError as exc:
                    log.warning("relay %s: reclaiming failed: %s", self.sub.name, type(exc).__name__)

    def _reclaim(self, key: str) -> None:
        """Take over entries idle longer than idle_timeout_s (a crashed consumer's), then deliver them."""
        start = "0-0"
        while not self._stop.is_set():
            reply = self.redis.xautoclaim(
                key, self.sub.group, self.consumer, int(self.idle_timeout_s * 1000), start_id=start, count=100
            )
            start, entries = _text(reply[0]), reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:  # trimmed away by MAXLEN before anyone delivered them
                self.redis.xack(key, self.sub.group, *deleted)
            for entry_id, fields in entries:
                entry_id = _text(entry_id)
                with self._lock:
                    busy = (key, entry_id) in self._in_flight
                if busy or fields is None:
                    continue
                while not self._free_slots():
                    if self._stop.is_set():
                        return
                self._submit(key, entry_id, fields)
            if start == "0-0":
                return

    def _deliver(self, key: str, entry_id: str, fields: dict[Any, Any]) -> None:
        topic = self.keys[key]
        try:
            if self._stop.is_set():
                return  # queued before stop: leave it pending for the next relay
            try:
                event = decode_entry(fields, self.sub, topic, entry_id)
            except Exception:
                log.error("relay %s: dropping undecodable entry %s of %s", self.sub.name, entry_id, topic)
                self.redis.xack(key, self.sub.group, entry_id)
                return
            if self._handle(event):
                self.redis.xack(key, self.sub.group, entry_id)
        except Exception:
            log.exception("relay %s: delivery of entry %s crashed; it will be redelivered", self.sub.name, entry_id)
        finally:
            with self._cond:
                self._in_flight.discard((key, entry_id))
                self._cond.notify_all()

    def _handle(self, event: CloudEvent) -> bool:
        """Deliver, else dead-letter; True when the entry may be acknowledged."""
        outcome = self._send_with_retries(self.sub.sink, event)
        if outcome.ok:
            return True
        if outcome.abandoned:
            return False
        attempts = 1 + (self.sub.delivery.retry if is_retryable(outcome.status) else 0)
        log.warning(
            "relay %s: event id=%s type=%s to %s failed (status %s, up to %d attempt(s))",
            self.sub.name,
            event["id"],
            event["type"],
            outcome.url,
            outcome.status,
            attempts,
        )
        if not self.sub.delivery.dead_letter:
            return True  # Knative drops it too
        dead = self._send_with_retries(self.sub.delivery.dead_letter, _error_event(event, outcome))
        if not dead.ok and not dead.abandoned:
            log.error(
                "relay %s: dead-letter sink %s refused event id=%s (status %s); left pending",
                self.sub.name,
                dead.url,
                event["id"],
                dead.status,
            )
        return dead.ok

    def _send_with_retries(self, url: str, event: CloudEvent) -> Outcome:
        headers, body = to_binary(event)
        if "content-type" not in headers and not isinstance(event.data, bytes):
            headers["content-type"] = "application/json"  # JSON data without a datacontenttype
        delivery = self.sub.delivery
        outcome = Outcome(ok=False, url=url)
        for attempt in range(delivery.retry + 1):
            if attempt and self._stop.wait(delivery.backoff(attempt)):
                return Outcome(ok=False, url=url, abandoned=True)
            outcome = self._post(url, headers, body)
            if outcome.ok or not is_retryable(outcome.status):
                return outcome
        return outcome

    def _post(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        try:
            resp = self.session.post(url, data=body, headers=headers, timeout=(2.0, self.http_timeout_s))
        except requests.RequestException:
            return Outcome(ok=False, status=None, url=url)
        return Outcome(
            ok=200 <= resp.status_code < 300, status=resp.status_code, body=resp.content[:ERROR_DATA_LIMIT], url=url
        )


def _error_event(event: CloudEvent, outcome: Outcome) -> CloudEvent:
    """A copy of ``event`` with the knativeerror* extensions a dead-letter sink receives."""
    attributes = dict(event.get_attributes())
    attributes["knativeerrordest"] = outcome.url
    if outcome.status is not None:
        attributes["knativeerrorcode"] = str(outcome.status)
        attributes["knativeerrordata"] = base64.b64encode(outcome.body).decode()
    return CloudEvent(attributes, event.data)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
