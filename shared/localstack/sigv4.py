"""AWS Signature Version 4 checks for the local S3 server, as S3 makes them.

moto checks no signature of a presigned URL (and, with its IAM checks switched on, only
header signatures against IAM users it generated; a presigned request, which has no
``Authorization`` header, fails there with a 500), so the local S3 server puts this WSGI
middleware in front of moto: every request must be signed with one of the server's keys,

- in the ``Authorization`` header (what SDKs send): ``X-Amz-Date`` within 15 minutes of now
  (else 403 ``RequestTimeTooSkewed``), and a literal ``X-Amz-Content-SHA256`` must match the
  body (else 400 ``XAmzContentSHA256Mismatch``);
- or in the query (a presigned URL): ``X-Amz-Algorithm``, ``X-Amz-Credential``, ``X-Amz-Date``,
  ``X-Amz-Expires`` (1 s to 7 days) and ``X-Amz-SignedHeaders``; past its expiry it is
  403 ``AccessDenied`` "Request has expired".

A wrong signature is 403 ``SignatureDoesNotMatch``, an unknown key 403 ``InvalidAccessKeyId``,
an unsigned request 403 ``AccessDenied`` (but a CORS preflight, ``OPTIONS``), each with S3's error XML. Not checked: the
per-chunk signatures of ``aws-chunked`` uploads (their seed signature is), and SigV2.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = timedelta(minutes=15)
MAX_EXPIRES_S = 7 * 24 * 3600
UNSIGNED = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
DATE_FORMAT = "%Y%m%dT%H%M%SZ"

StartResponse = Callable[..., Any]
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Refused(Exception):
    """A request S3 would refuse: its status, error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _mismatch() -> Refused:
    return Refused(
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
    )


def _malformed(message: str, query: bool) -> Refused:
    return Refused(400, "AuthorizationQueryParametersError" if query else "AuthorizationHeaderMalformed", message)


def _encode(value: str, safe: str = "-_.~") -> str:
    return quote(value, safe=safe)


def canonical_uri(raw_path: str) -> str:
    """The path as SigV4 signs it for S3: decoded once, each byte but unreserved ones and ``/`` escaped."""
    return _encode(unquote(raw_path), safe="/-_.~") or "/"


def query_pairs(query: str) -> list[tuple[str, str]]:
    """The decoded (name, value) pairs of a query string (``+`` is a plus, as S3 reads it)."""
    pairs = []
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote(name), unquote(value)))
    return pairs


def canonical_query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted((_encode(k), _encode(v)) for k, v in pairs))


def headers_of(environ: Mapping[str, Any]) -> dict[str, str]:
    """The request's headers by lower-case name (WSGI keeps them as ``HTTP_*``, but two)."""
    found = {k[5:].replace("_", "-").lower(): str(v) for k, v in environ.items() if k.startswith("HTTP_")}
    for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
        if environ.get(key):
            found[name] = str(environ[key])
    return found


def signature(secret: str, scope: list[str], amz_date: str, canonical_request: str) -> str:
    """The hex SigV4 signature of ``canonical_request`` for the scope ``[date, region, service, "aws4_request"]``."""
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, "/".join(scope), hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = ("AWS4" + secret).encode()
    for part in scope:
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def _timestamp(value: str, query: bool) -> datetime:
    try:
        return datetime.strptime(value, DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise _malformed(f"X-Amz-Date must look like 20260102T030405Z, not {value[:40]!r}", query) from None


def check(environ: Mapping[str, Any], keys: Mapping[str, str], body: bytes | None, now: datetime) -> None:
    """Refused unless the request is signed (header or query) with one of ``keys`` (access key id -> secret).

    ``body``: the request body when the header signs a literal payload hash (None: not read).
    """
    headers = headers_of(environ)
    raw_path = str(environ.get("RAW_URI") or environ.get("REQUEST_URI") or quote(environ.get("PATH_INFO", "/")))
    if raw_path.startswith(("http://", "https://")):  # an absolute-form request target
        raw_path = "/" + raw_path.split("://", 1)[1].partition("/")[2]
    raw_path, _, raw_query = raw_path.partition("?")
    if not raw_query:
        raw_query = str(environ.get("QUERY_STRING", ""))
    pairs = query_pairs(raw_query)
    params = dict(pairs)
    authorization = headers.get("authorization", "")
    query = "X-Amz-Signature" in params or "X-Amz-Credential" in params
    if authorization and query:
        raise Refused(400, "InvalidArgument", "Only one auth mechanism allowed")
    if query:
        if params.get("X-Amz-Algorithm") != ALGORITHM:
            raise _malformed(f"X-Amz-Algorithm only supports {ALGORITHM!r}", True)
        missing = [
            p
            for p in ("X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature")
            if p not in params
        ]
        if missing:
            raise _malformed(f"Query-string authentication requires {', '.join(missing)}", True)
        credential, amz_date = params["X-Amz-Credential"], params["X-Amz-Date"]
        signed, given = params["X-Amz-SignedHeaders"], params["X-Amz-Signature"]
        payload = params.get("X-Amz-Content-Sha256", UNSIGNED)
        pairs = [(k, v) for k, v in pairs if k != "X-Amz-Signature"]
    elif authorization:
        algorithm, _, rest = authorization.partition(" ")
        if algorithm != ALGORITHM:
            raise Refused(400, "InvalidArgument", f"Only {ALGORITHM} (AWS Signature Version 4) is supported")
        fields = dict(p.strip().partition("=")[::2] for p in rest.split(","))
        if not {"Credential", "SignedHeaders", "Signature"} <= set(fields):
            raise _malformed("The authorization header is malformed; Credential, SignedHeaders and Signature", False)
        credential, signed, given = fields["Credential"], fields["SignedHeaders"], fields["Signature"]
        amz_date = headers.get("x-amz-date", "")
        if not amz_date:
            raise Refused(403, "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")
        if "x-amz-content-sha256" not in headers:
            raise Refused(400, "InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
        payload = headers["x-amz-content-sha256"]
    else:
        raise Refused(403, "AccessDenied", "Access Denied")

    scope = credential.split("/")
    if len(scope) != 5 or scope[3] != "s3" or scope[4] != "aws4_request":
        raise _malformed(f"the credential {credential!r} is not <key>/<date>/<region>/s3/aws4_request", query)
    if scope[0] not in keys:
        raise Refused(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    when = _timestamp(amz_date, query)
    if scope[1] != amz_date[:8]:
        raise _malformed(f"the credential's date {scope[1]!r} is not the request's ({amz_date[:8]!r})", query)
    signed_names = signed.split(";")
    if "host" not in signed_names:
        raise _malformed("the host header must be signed", query)
    missing_headers = [name for name in signed_names if name not in headers]
    if missing_headers:
        raise _mismatch()  # S3 cannot recompute a signature over headers the request lacks
    canonical_headers = "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in signed_names)
    canonical_request = "\n".join(
        [
            str(environ.get("REQUEST_METHOD", "GET")).upper(),
            canonical_uri(raw_path),
            canonical_query(pairs),
            canonical_headers,
            signed,
            payload,
        ]
    )
    expected = signature(keys[scope[0]], scope[1:], amz_date, canonical_request)
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise _mismatch()
    if query:
        if not (params["X-Amz-Expires"].isascii() and params["X-Amz-Expires"].isdigit()):
            raise _malformed("X-Amz-Expires should be a number", True)
        expires = int(params["X-Amz-Expires"])
        if not 0 < expires <= MAX_EXPIRES_S:
            raise _malformed(f"X-Amz-Expires must be between 1 and {MAX_EXPIRES_S} seconds", True)
        if now > when + timedelta(seconds=expires):
            raise Refused(403, "AccessDenied", "Request has expired")
        if when - now > MAX_SKEW:
            raise Refused(403, "AccessDenied", "Request is not valid yet")
    else:
        if abs(now - when) > MAX_SKEW:
            raise Refused(
                403,
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
            )
        if body is not None and not hmac.compare_digest(hashlib.sha256(body).hexdigest().encode(), payload.encode()):
            raise Refused(
                400,
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )


def literal_payload_hash(environ: Mapping[str, Any]) -> bool:
    """Whether the request's header signature covers a literal SHA-256 of its body (so the body must be read)."""
    value = str(environ.get("HTTP_X_AMZ_CONTENT_SHA256", ""))
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def error_xml(refused: Refused, resource: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{refused.code}</Code><Message>{escape(refused.message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    ).encode()


class SignatureCheck:
    """WSGI middleware: ``app`` sees only requests ``check`` lets through (see the module docstring)."""

    def __init__(self, app: App, keys: Mapping[str, str], clock: Callable[[], datetime] | None = None) -> None:
        self.app = app
        self.keys = dict(keys)
        self.clock = clock or (lambda: datetime.now(UTC))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "OPTIONS" and "HTTP_AUTHORIZATION" not in environ:
            return self.app(environ, start_response)  # a CORS preflight: S3 answers it unsigned (bucket CORS)
        body = None
        if literal_payload_hash(environ) and "HTTP_AUTHORIZATION" in environ:
            stream, length = environ["wsgi.input"], str(environ.get("CONTENT_LENGTH") or "")
            if length.isdigit():
                body = stream.read(int(length)) if int(length) else b""
            else:  # chunked transfer: the server ends the stream
                body = stream.read() if environ.get("wsgi.input_terminated") else b""
            environ["wsgi.input"] = io.BytesIO(body)
        try:
            check(environ, self.keys, body, self.clock())
        except Refused as refused:
            data = b"" if environ.get("REQUEST_METHOD") == "HEAD" else error_xml(refused, environ.get("PATH_INFO", "/"))
            start_response(
                f"{refused.status} {'Forbidden' if refused.status == 403 else 'Bad Request'}",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(data)))],
            )
            return [data]
        return self.app(environ, start_response)
