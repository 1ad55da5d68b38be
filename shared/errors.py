"""The one error hierarchy of Kinfer.

::

    KinferError (500, internal_error)
    ├── InvalidInput (400, invalid_input)          carries ``field``
    ├── Unauthorized (401, unauthorized)
    ├── Forbidden (403, forbidden)
    ├── NotFound (404, not_found)
    ├── MethodNotAllowed (405, method_not_allowed)
    ├── RequestTimeout (408, request_timeout)     the HTTP server's own bound on a slow request head
    ├── Conflict (409, conflict)
    ├── PayloadTooLarge (413, payload_too_large)
    ├── UriTooLong (414, uri_too_long)             the HTTP server's own bound
    ├── UnsupportedMediaType (415, unsupported_media_type)
    ├── Unprocessable (422, unprocessable)         permanent event failure
    │   └── ModelError (422, model_error)          the model failed on this input
    ├── RateLimited (429, rate_limited)            retryable, ``retry_after``
    ├── HeadersTooLarge (431, headers_too_large)   the HTTP server's own bound
    ├── BackendError (502, backend_error)
    ├── Unavailable (503, unavailable)             retryable, ``retry_after``
    │   └── CircuitOpen (503, circuit_open)
    └── BackendTimeout (504, backend_timeout)      retryable

Third-party exceptions are translated into these once, at the adapter that
calls the library (``raise ... from exc``); ``shared.web.responses`` turns any of them
into the JSON error body described in ``docs/architecture.md`` (the HTTP contract).
"""

from __future__ import annotations


class KinferError(Exception):
    status = 500
    code = "internal_error"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        retry_after: float | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.headers = dict(headers or {})
        if code:
            self.code = code

    def body(self) -> dict[str, object]:
        """The public part of the error body (request and trace ids are added by the HTTP layer)."""
        out: dict[str, object] = {"error": self.message, "code": self.code}
        if self.field:
            out["field"] = self.field
        return out


class InvalidInput(KinferError):
    status, code = 400, "invalid_input"


class Unauthorized(KinferError):
    status, code = 401, "unauthorized"


class Forbidden(KinferError):
    status, code = 403, "forbidden"


class NotFound(KinferError):
    status, code = 404, "not_found"


class MethodNotAllowed(KinferError):
    status, code = 405, "method_not_allowed"


class RequestTimeout(KinferError):
    status, code = 408, "request_timeout"


class Conflict(KinferError):
    status, code = 409, "conflict"


class PayloadTooLarge(KinferError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(KinferError):
    status, code = 415, "unsupported_media_type"


class Unprocessable(KinferError):
    status, code = 422, "unprocessable"


class ModelError(Unprocessable):
    """The model raised on the caller's input (Triton INTERNAL): the caller's answer, never the backend's fault."""

    code = "model_error"


class RateLimited(KinferError):
    status, code, retryable = 429, "rate_limited", True


class BackendError(KinferError):
    status, code = 502, "backend_error"


class Unavailable(KinferError):
    status, code, retryable = 503, "unavailable", True


class CircuitOpen(Unavailable):
    code = "circuit_open"


class BackendTimeout(KinferError):
    status, code, retryable = 504, "backend_timeout", True


class UriTooLong(KinferError):
    status, code = 414, "uri_too_long"


class HeadersTooLarge(KinferError):
    status, code = 431, "headers_too_large"
