"""Async inference: ``Prefer: respond-async`` on POST /v1/infer and the v2 infer route, GET /v1/requests/{id}
(and ``GET /v1/requests?prefix=``: the caller's own requests whose id starts so).

``accept`` validates what is cheap to check (the body's shape, the model's name: 404 at once when unknown,
the callback URL), pins the version the model resolves to now (as a batch job does), stores the request in
``infer_requests`` and emits a ``dev.kinfer.infer.request.v1`` event to K_SINK: the chunk topic, delivered
to the batch worker like a chunk. The caller gets 202 and ``Location: /v1/requests/{id}``.

``execute`` (the worker) runs the request through the same async DataPlane a synchronous call uses, held up
to REQUEST_WAIT_S while its backend wakes; a retryable failure (503, 504, 429, a 5xx) raises, so the event is
redelivered with the transport's backoff (a Triton cold start longer than the wait, a worker that died:
nothing is lost); a permanent one (400, 404, 422) records ``failed`` with the error body a synchronous call
would have answered. A request already ``succeeded`` or ``failed`` is never run again.

When the request named a callback, the outcome is stored first, then a ``dev.kinfer.infer.callback.v1``
event makes the worker POST it, signed (``shared.batch.callbacks``); a failed POST is redelivered with
backoff, and the dead-letter function marks the callback failed once the budget is spent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, NotRequired, TypedDict

import orjson

from shared import telemetry
from shared import validation as v
from shared.batch import request_store as store
from shared.batch.callbacks import CallbackRefused
from shared.batch.events import INFER_CALLBACK_EVENT_TYPE, INFER_REQUEST_EVENT_TYPE, InferEventData
from shared.domain import JSONObject
from shared.errors import InvalidInput, KinferError, NotFound, PayloadTooLarge, RateLimited, Unavailable
from shared.inference import v2 as v2proto
from shared.logs import request_id_var

if TYPE_CHECKING:
    from cloudevents.http import CloudEvent

    from shared.batch.callbacks import CallbackPolicy
    from shared.clients.db import Database
    from shared.inference.dataplane import DataPlane
    from shared.inference.resolve import Resolver
    from shared.inference.v2 import V2Protocol
    from shared.settings import Settings

log = logging.getLogger(__name__)

V1, V2 = "v1", "v2"
V1_FIELDS = frozenset({"model", "version", "input"})
MAX_ERROR_LEN = 500
# emit(event type, event id, data): one CloudEvent to K_SINK (Unavailable when the sink is down)
Emit = Callable[[str, str, InferEventData], None]


def prefers_async(prefer: str | None) -> bool:
    """Whether a ``Prefer`` header (RFC 7240) asks for ``respond-async``."""
    if not prefer:
        return False
    return any(p.split(";", 1)[0].strip().lower() == "respond-async" for p in prefer.split(","))


def location(request_id: object) -> str:
    return f"/v1/requests/{request_id}"


class Accepted(TypedDict):
    """The 202 body of an accepted async request."""

    id: str
    status: str
    model: str
    version: str
    created_at: str
    expires_at: str
    location: str
    callback_url: NotRequired[str]


class CallbackState(TypedDict):
    url: str
    status: str | None
    attempts: int
    error: str | None
    at: str | None


class RequestStatus(TypedDict):
    """GET /v1/requests/{id} (and the body of a callback): ``result`` is exactly the body the synchronous
    call would have answered, ``error`` its error body; ``http_status`` the status it would have had."""

    id: str
    status: str
    protocol: str
    model: str
    version: str
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    expires_at: str
    http_status: NotRequired[int]
    result: NotRequired[JSONObject]
    error: NotRequired[JSONObject]
    callback: NotRequired[CallbackState]
    key_id: str  # the API key that sent it: a callback receiver checks it is its own


class RequestSummary(TypedDict):
    """One request of ``GET /v1/requests?prefix=``: enough to tell the matches apart."""

    id: str
    status: str
    model: str
    version: str
    created_at: str


class RequestMatches(TypedDict):
    """``GET /v1/requests?prefix=``: the caller's own requests whose id starts with the prefix, newest first
    (at most ``MAX_PREFIX_MATCHES``; ``more`` when there were others)."""

    prefix: str
    requests: list[RequestSummary]
    more: bool


class EventAnswer(TypedDict):
    """What the worker and the dead-letter function answer for an async inference event."""

    request_id: NotRequired[str]
    status: NotRequired[str]
    callback: NotRequired[str]
    skipped: NotRequired[str]
    ignored: NotRequired[str]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


ID_PREFIX = re.compile(r"[0-9a-f-]{4,36}")
MIN_PREFIX_DIGITS = 4
MAX_PREFIX_MATCHES = 10


def parse_prefix(raw: str | None) -> str:
    """A request id prefix: hex digits (dashes allowed where a UUID has them), at least 4 digits."""
    text = (raw or "").strip().lower()
    if not ID_PREFIX.fullmatch(text) or sum(c != "-" for c in text) < MIN_PREFIX_DIGITS:
        raise InvalidInput(
            f"prefix must be the start of a request id: at least {MIN_PREFIX_DIGITS} hex digits", field="prefix"
        )
    return text


def parse_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"no request {raw[:64]!r}: request ids are UUIDs") from None


def event_request_id(event: CloudEvent) -> uuid.UUID:
    """The request id of an async inference event (InvalidInput: 400, not retried)."""
    data = event.data
    if not isinstance(data, dict):
        raise InvalidInput("async inference event data must be a JSON object")
    try:
        return uuid.UUID(str(data["request_id"]))
    except (KeyError, ValueError):
        raise InvalidInput("async inference event data needs request_id (a uuid)") from None


def status_body(row: store.RequestRow) -> RequestStatus:
    body: RequestStatus = {
        "id": str(row["id"]),
        "status": row["status"],
        "protocol": row["protocol"],
        "model": row["model_name"],
        "version": row["model_version"],
        "attempts": row["attempts"],
        "created_at": row["created_at"].isoformat(),
        "started_at": _iso(row["started_at"]),
        "finished_at": _iso(row["finished_at"]),
        "expires_at": row["expires_at"].isoformat(),
        "key_id": row["owner"],
    }
    if row["http_status"] is not None:
        body["http_status"] = row["http_status"]
    if row["result"] is not None:
        body["result"] = row["result"]
    if row["error"] is not None:
        body["error"] = row["error"]
    if row["callback_url"]:
        body["callback"] = {
            "url": row["callback_url"],
            "status": row["callback_status"],
            "attempts": row["callback_attempts"],
            "error": row["callback_error"],
            "at": _iso(row["callback_at"]),
        }
    return body


def _v1_request(body: bytes) -> tuple[JSONObject, str, str | None]:
    """The /v1/infer body, its model name and version: the checks ``run_inference`` makes before resolving."""
    request = v.require_object(v.parse_json(body, "body"))
    if not request.keys() <= V1_FIELDS:
        v.reject_unknown(request, V1_FIELDS)
    if request.get("model") in (None, ""):
        raise InvalidInput("model is required", field="model")
    name = v.string(request["model"], "model", max_len=128)
    version = v.string(request["version"], "version", max_len=32) if request.get("version") is not None else None
    if "input" not in request:
        raise InvalidInput('input is required: {"data": [...]} or {"<tensor>": [...]}', field="input")
    return request, name, version


def _v2_request(body: bytes, headers: Mapping[str, str]) -> JSONObject:
    if headers.get(v2proto.HEADER_LENGTH) is not None:
        raise InvalidInput(
            "binary tensor data is not accepted with Prefer: respond-async; send the tensors as JSON",
            field=v2proto.HEADER_LENGTH,
        )
    request, _ = v2proto.split_body(body, headers)
    v2proto.parse_request(request)
    return request


class AsyncRequests:
    """Owns async inference requests: accept, read, execute, and their callbacks and dead letters."""

    def __init__(
        self,
        db: Database,
        resolver: Resolver,
        dataplane: DataPlane,
        v2: V2Protocol,
        callbacks: CallbackPolicy,
        emit: Emit,
        settings: Settings,
    ) -> None:
        self.db = db
        self.resolver = resolver
        self.dataplane = dataplane
        self.v2 = v2
        self.callbacks = callbacks
        self.emit = emit
        self.settings = settings

    # -- accept ---------------------------------------------------------------------
    async def accept(
        self,
        protocol: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        owner: str,
        route_key: str | None,
        request_id: str,
        trace_id: str = "",
        name: str | None = None,
        version: str | None = None,
        callback_url: str | None = None,
    ) -> Accepted:
        """Validate, store and queue one request (see the module docstring); the 202 body."""
        limit = self.settings.request_max_body_bytes
        if len(body) > limit:
            raise PayloadTooLarge(
                f"an async request body may be at most {limit} bytes (REQUEST_MAX_BODY_BYTES; it is stored until "
                "the request ends); send bulk work as a batch job (POST /v1/batch)"
            )
        if protocol == V1:
            request, name, version = _v1_request(body)
        else:
            request = _v2_request(body, headers)
        assert name is not None
        model = await self.resolver.resolve_async(name, version, route_key)  # 404 now for an unknown model
        if protocol == V1:
            request["version"] = model["version"]  # the version resolved now runs, as for a batch job
            body = orjson.dumps(request)
        if callback_url is not None:
            callback_url = await asyncio.to_thread(self.callbacks.check, callback_url)
        values: store.NewRequest = {
            "id": uuid.uuid4(),
            "owner": owner[:128],
            "protocol": protocol,
            "model_name": model["name"],
            "model_version": model["version"],
            "route_key": route_key[:256] if route_key else None,
            "body": body,
            "request_id": request_id[:128],
            "trace_id": trace_id[:64],
            "callback_url": callback_url,
            "callback_status": store.CB_PENDING if callback_url else None,
        }
        row = await asyncio.to_thread(self._enqueue, values)
        telemetry.metrics().async_requests.labels(store.QUEUED).inc()
        accepted: Accepted = {
            "id": str(row["id"]),
            "status": store.QUEUED,
            "model": row["model_name"],
            "version": row["model_version"],
            "created_at": row["created_at"].isoformat(),
            "expires_at": row["expires_at"].isoformat(),
            "location": location(row["id"]),
        }
        if callback_url:
            accepted["callback_url"] = callback_url
        return accepted

    def _enqueue(self, values: store.NewRequest) -> store.RequestRow:
        """Store, then emit; when the event cannot be sent the row is removed and the caller gets 503."""
        with self.db.begin() as conn:
            limit = self.settings.request_max_active
            if store.active_of(conn, values["owner"]) >= limit:
                raise RateLimited(
                    f"this API key has {limit} async requests queued or running (REQUEST_MAX_ACTIVE); send more "
                    "when some have finished",
                    retry_after=10,
                )
            row = store.insert(conn, values, self.settings.request_retention_s)
        try:
            self._emit(INFER_REQUEST_EVENT_TYPE, row["id"])
        except KinferError:
            with self.db.begin() as conn:
                store.delete(conn, row["id"])
            raise Unavailable(
                "the request could not be queued (event sink unavailable); nothing was stored, send it again",
                retry_after=5,
            ) from None
        return row

    def _emit(self, event_type: str, request_id: uuid.UUID) -> None:
        suffix = "request" if event_type == INFER_REQUEST_EVENT_TYPE else "callback"
        self.emit(event_type, f"{request_id}:{suffix}", {"request_id": str(request_id)})

    # -- read -----------------------------------------------------------------------
    def get(self, raw_id: str, owner: str | None) -> RequestStatus:
        """The request's status (404 when unknown or another key's; ``request_expired`` past its retention).
        ``owner`` None: any key's (an admin)."""
        request_id = parse_id(raw_id)
        with self.db.begin() as conn:
            row = store.get(conn, request_id, owner)
            if row is not None and row["expired"]:
                store.delete(conn, request_id)
        if row is None:
            raise NotFound(f"no request {request_id} (unknown, another key's, or removed after its retention)")
        if row["expired"]:
            raise NotFound(
                f"request {request_id} expired: results are kept {self.settings.request_retention_s} s "
                "(REQUEST_RETENTION_S)",
                code="request_expired",
            )
        return status_body(row)

    def find(self, prefix: str | None, owner: str) -> RequestMatches:
        """``owner``'s own live requests whose id starts with ``prefix`` (never another key's, admin or not)."""
        text = parse_prefix(prefix)
        with self.db.read() as conn:
            rows = store.with_prefix(conn, text, owner, MAX_PREFIX_MATCHES + 1)
        found: list[RequestSummary] = [
            {
                "id": str(r["id"]),
                "status": r["status"],
                "model": r["model_name"],
                "version": r["model_version"],
                "created_at": r["created_at"].isoformat(),
            }
            for r in rows[:MAX_PREFIX_MATCHES]
        ]
        return {"prefix": text, "requests": found, "more": len(rows) > MAX_PREFIX_MATCHES}

    # -- execute (the batch worker) ---------------------------------------------------
    async def execute(self, event: CloudEvent) -> tuple[int, EventAnswer]:
        """Run one stored request once (see the module docstring)."""
        request_id = event_request_id(event)
        row = await asyncio.to_thread(self._start, request_id)
        if isinstance(row, str):
            return 200, {"request_id": str(request_id), "skipped": row}
        telemetry.metrics().async_requests.labels(store.RUNNING).inc()
        try:
            status, http_status, answer = await self._run(row)
        except KinferError as exc:
            if exc.retryable or exc.status >= 500:
                await asyncio.to_thread(self._requeue, request_id)
                raise
            status, http_status, answer = store.FAILED, exc.status, self._error_body(exc, row)
        except BaseException:
            await asyncio.to_thread(self._requeue, request_id)
            raise
        return 200, await asyncio.to_thread(self._record, row, status, http_status, answer)

    def _start(self, request_id: uuid.UUID) -> store.RequestRow | str:
        """The row to run now, or why not (already final, unknown)."""
        with self.db.begin() as conn:
            row = store.start(conn, request_id)
            current = store.get(conn, request_id) if row is None else None
        if row is not None:
            return row
        if current is None:  # acked: an event creates no work (its row, written by the API, is what runs)
            log.warning("async request event ignored: request %s is unknown or expired", request_id)
            return "unknown or expired request"
        if current["callback_status"] == store.CB_PENDING:  # the outcome is stored; its callback was not queued
            self._queue_callback(request_id)
        return f"request already {current['status']}"

    def _requeue(self, request_id: uuid.UUID) -> None:
        with self.db.begin() as conn:
            store.requeue(conn, request_id)

    async def _run(self, row: store.RequestRow) -> tuple[str, int, JSONObject]:
        """Run the stored request as its caller's: its request id and key are what its capture record names."""
        wait = self.settings.request_wait_s
        token = request_id_var.set(row["request_id"])
        try:
            if row["protocol"] == V1:
                body = orjson.loads(row["body"])
                answer = await self.dataplane.run_inference(body, row["route_key"], wait, key_id=row["owner"])
                answer["request_id"] = row["request_id"]
                if row["trace_id"]:
                    answer["trace_id"] = row["trace_id"]
                return store.SUCCEEDED, 200, dict(answer)
            headers = {"content-type": "application/json"}
            result = await self.v2.infer_v2(
                row["model_name"], row["model_version"], row["body"], headers, row["route_key"], wait, row["owner"]
            )
            return store.SUCCEEDED, 200, dict(result)
        finally:
            request_id_var.reset(token)

    @staticmethod
    def _error_body(exc: KinferError, row: store.RequestRow) -> JSONObject:
        """The error body a synchronous call would have answered."""
        body = exc.body()
        body["error"] = str(body["error"])[:MAX_ERROR_LEN]
        body["request_id"] = row["request_id"]
        if row["trace_id"]:
            body["trace_id"] = row["trace_id"]
        return body

    def _record(self, row: store.RequestRow, status: str, http_status: int, body: JSONObject) -> EventAnswer:
        """Store the outcome once; then queue its callback. Expired requests are purged on the way."""
        with self.db.begin() as conn:
            recorded = store.finish(conn, row["id"], status, http_status, body, self.settings.request_retention_s)
            purged = store.purge_expired(conn)
        if purged:
            log.info("async requests: %d expired request(s) removed", purged)
        answer: EventAnswer = {"request_id": str(row["id"]), "status": status}
        if recorded is None:
            answer["skipped"] = "already recorded"
            return answer
        telemetry.metrics().async_requests.labels(status).inc()
        if recorded["callback_status"] == store.CB_PENDING:
            self._queue_callback(row["id"])
            answer["callback"] = store.CB_QUEUED
        return answer

    def _queue_callback(self, request_id: uuid.UUID) -> None:
        """Emit the callback event, then mark it queued (a failure to emit raises: the request event is
        redelivered, finds the outcome stored and the callback still pending, and emits it then)."""
        self._emit(INFER_CALLBACK_EVENT_TYPE, request_id)
        with self.db.begin() as conn:
            store.set_callback(conn, request_id, store.CB_QUEUED, only_from=(store.CB_PENDING,))

    # -- callbacks --------------------------------------------------------------------
    def deliver_callback(self, event: CloudEvent) -> tuple[int, EventAnswer]:
        """POST the outcome to the request's callback_url, signed; raises (redelivered) when it fails."""
        request_id = event_request_id(event)
        with self.db.begin() as conn:
            row = store.get(conn, request_id)
        answer: EventAnswer = {"request_id": str(request_id)}
        if row is None or not row["callback_url"]:
            log.warning("callback event ignored: request %s is unknown, expired or has no callback", request_id)
            return 200, {**answer, "skipped": "unknown or expired request, or no callback"}
        if row["status"] not in store.FINAL or row["callback_status"] not in (store.CB_PENDING, store.CB_QUEUED):
            return 200, {**answer, "skipped": f"callback {row['callback_status']}, request {row['status']}"}
        body = orjson.dumps(status_body(row))
        try:  # signed with the secret of the key that sent the request (read now: a rotation applies at once)
            secret = self.callbacks.secret_for(row["owner"])
            self.callbacks.deliver(row["callback_url"], str(request_id), body, secret)
        except CallbackRefused as exc:
            telemetry.metrics().async_callbacks.labels("refused").inc()
            self._end_callback(request_id, store.CB_FAILED, str(exc))
            log.warning("async request %s: callback refused: %s", request_id, exc)
            return 200, {**answer, "callback": store.CB_FAILED}
        except KinferError as exc:
            telemetry.metrics().async_callbacks.labels("retried").inc()
            with self.db.begin() as conn:
                store.callback_attempted(conn, request_id, exc.message[:MAX_ERROR_LEN])
            raise
        with self.db.begin() as conn:
            store.callback_attempted(conn, request_id, None)
        self._end_callback(request_id, store.CB_DELIVERED, None)
        telemetry.metrics().async_callbacks.labels(store.CB_DELIVERED).inc()
        return 200, {**answer, "callback": store.CB_DELIVERED}

    def _end_callback(self, request_id: uuid.UUID, status: str, error: str | None) -> None:
        with self.db.begin() as conn:
            store.set_callback(conn, request_id, status, only_from=(store.CB_PENDING, store.CB_QUEUED), error=error)

    # -- dead letters (the batch-deadletter function) -----------------------------------------
    def fail_dead(self, event: CloudEvent, reason: str) -> tuple[int, EventAnswer]:
        """An async inference event whose deliveries ran out: the request fails (its callback is still sent),
        or the callback is marked failed."""
        try:
            request_id = event_request_id(event)
        except InvalidInput as exc:
            return 200, {"ignored": exc.message}
        answer: EventAnswer = {"request_id": str(request_id)}
        if event["type"] == INFER_CALLBACK_EVENT_TYPE:
            self._end_callback(request_id, store.CB_FAILED, reason[:MAX_ERROR_LEN])
            telemetry.metrics().async_callbacks.labels("dead_letter").inc()
            log.warning("async request %s: callback dead-lettered: %s", request_id, reason)
            return 200, {**answer, "callback": store.CB_FAILED}
        with self.db.begin() as conn:
            row = store.get(conn, request_id)
        if row is None or row["status"] in store.FINAL:
            if row is None:
                log.warning("dead letter ignored: request %s is unknown or expired", request_id)
            return 200, {**answer, "skipped": "unknown or already finished"}
        error: JSONObject = {"error": reason[:MAX_ERROR_LEN], "code": Unavailable.code, "request_id": row["request_id"]}
        log.warning("async request %s dead-lettered: %s", request_id, reason)
        return 200, self._record(row, store.FAILED, Unavailable.status, error)
