"""uvicorn's httptools protocol, with every answer the server gives itself in the JSON error shape.

uvicorn answers a request that httptools cannot parse (a malformed request line,
``Content-Length: abc``, two Content-Lengths, an invalid chunk size, ...) with a
plain-text ``400 Invalid HTTP request received.``, and it puts no bound on the
request line or the headers (httptools buffers a header of any size). This
protocol class, which ``shared.web.server`` hands to uvicorn, answers those in the
shape of ``docs/architecture.md`` instead::

    400 invalid_input        a request httptools rejects (field Content-Length,
                             Transfer-Encoding or body when the reason names it)
    408 request_timeout      a request head not complete HEAD_TIMEOUT_S after it began (or
                             after the connection opened): a client that trickles or stalls
                             its head must not hold a socket, and with many of them every
                             file descriptor of the process, for ever
    414 uri_too_long         a request target over MAX_TARGET_BYTES
    431 headers_too_large    a request head over MAX_HEAD_BYTES or MAX_HEADERS headers

Each of these closes the connection (its framing can no longer be trusted). When
the application had already started answering (a body that turns malformed after
the handler responded) there is nothing left to say: the connection is closed.
What stays outside: a client that sends nothing parseable at all gets no answer
when it closes first, and TLS/HTTP-2 prefaces to this HTTP/1.1 port get the 400.
"""

from __future__ import annotations

import uuid
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from shared.errors import HeadersTooLarge, InvalidInput, KinferError, RequestTimeout, UriTooLong

HEAD_TIMEOUT_S = 10.0
MAX_TARGET_BYTES = 8 * 1024
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 128

# llhttp's reason (fixed text, never request content) -> the field at fault.
_FIELDS = (
    ("content-length", "Content-Length"),
    ("transfer-encoding", "Transfer-Encoding"),
    ("chunk", "body"),
    ("header", "headers"),
)


class _Rejected(Exception):
    """Raised from a parser callback to stop parsing; the protocol answers ``error``."""

    def __init__(self, error: KinferError) -> None:
        super().__init__(error.message)
        self.error = error


def parser_error(exc: Exception) -> KinferError:
    """The Kinfer error for a request httptools refused."""
    reason = str(exc).strip().rstrip(".") or "unparseable"
    lowered = reason.lower()
    field = next((name for token, name in _FIELDS if token in lowered), None)
    return InvalidInput(f"malformed HTTP request: {reason}", field=field)


def error_bytes(error: KinferError) -> bytes:
    """A complete HTTP/1.1 response (status line, headers, JSON body) that closes the connection."""
    request_id = uuid.uuid4().hex
    body = orjson.dumps({**error.body(), "request_id": request_id})
    head = [
        STATUS_LINE[error.status],
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"x-request-id: " + request_id.encode() + b"\r\n",
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


class KinferHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with bounded request heads and JSON answers for protocol errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True
        self._head_bytes = 0  # bytes of chunks that arrived wholly inside the current head
        self._parsed_head = 0  # bytes of the header lines parsed so far
        self._began = False  # a message began in the chunk being parsed
        self._header_count = 0
        self._deferred: KinferError | None = None
        self._head_timer: Any = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._time_head()  # a connection that never sends a whole head is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._untime_head()
        super().connection_lost(exc)

    def _time_head(self) -> None:
        self._untime_head()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timed_out)

    def _untime_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if (
            self._reading_head
            and not self.transport.is_closing()
            and (self.cycle is None or self.cycle.response_complete)
        ):
            self._reject(RequestTimeout(f"the request head did not arrive within {HEAD_TIMEOUT_S:g} s"))

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        self._began = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            cause = exc.__cause__ or exc.__context__
            self._reject(cause.error if isinstance(cause, _Rejected) else parser_error(exc))
            return
        except _Rejected as exc:
            self._reject(exc.error)
            return
        if self._reading_head:  # still inside a head: it must stay within bounds while it arrives
            if not self._began:  # the whole chunk is head (one that began a message may end one, too)
                self._head_bytes += len(data)
            error = self._head_error()
            if error is not None:
                self._reject(error)

    def _head_error(self) -> KinferError | None:
        if len(self.url or b"") > MAX_TARGET_BYTES:
            return UriTooLong(f"the request target is longer than {MAX_TARGET_BYTES} bytes")
        if max(self._head_bytes, len(self.url or b"") + self._parsed_head) > MAX_HEAD_BYTES:
            return HeadersTooLarge(f"the request head is larger than {MAX_HEAD_BYTES} bytes")
        if self._header_count > MAX_HEADERS:
            return HeadersTooLarge(f"the request has more than {MAX_HEADERS} headers")
        return None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._time_head()
        self._reading_head = True
        self._began = True
        self._head_bytes = self._parsed_head = self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._parsed_head += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        error = self._head_error()
        if error is not None:
            raise _Rejected(error)
        self._reading_head = False
        self._untime_head()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True

    def _reject(self, error: KinferError) -> None:
        """Answer ``error`` and close: now, after the answers still owed to earlier pipelined requests,
        or (when the handler of this request already started answering) not at all."""
        self.logger.info("rejected a malformed request: %s %s", error.status, error.message)
        cycle = self.cycle
        if self._reading_head and cycle is not None and not cycle.response_complete:
            self._deferred = error  # an earlier request is still being answered: ours comes after it
            self.flow.pause_reading()
            return
        if not self._reading_head and cycle is not None:
            if cycle.response_started:
                self.transport.close()
                return
            cycle.disconnected = True  # the handler is still reading the body: its answer is dropped
            cycle.message_event.set()
        self.transport.write(error_bytes(error))
        self.transport.close()

    def on_response_complete(self) -> None:
        queued = bool(self.pipeline)
        super().on_response_complete()
        if self._deferred is not None and not queued and not self.transport.is_closing():
            self.transport.write(error_bytes(self._deferred))
            self.transport.close()

    def send_400_response(self, msg: str) -> None:  # any path of uvicorn's own that still answers 400
        self._reject(InvalidInput(f"malformed HTTP request: {msg.rstrip('.')}"))
