"""The local S3 server's SigV4 checks, against requests botocore signs (no server, no network)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from shared.localstack.sigv4 import SignatureCheck

KEYS = {"kinfer": "kinfer-secret"}
ENDPOINT = "http://127.0.0.1:9000"


def environ(method: str, url: str, headers: dict[str, str], body: bytes = b"") -> dict[str, Any]:
    parts = urlsplit(url)
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": unquote(parts.path),
        "QUERY_STRING": parts.query,
        "RAW_URI": parts.path + (f"?{parts.query}" if parts.query else ""),
        "HTTP_HOST": parts.netloc,
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)) if body else "",
    }
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        env[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value
    return env


def call(env: dict[str, Any], now: datetime | None = None) -> tuple[str, bytes, bytes]:
    """(status, body the app saw or b"", the answer) of ``env`` through the middleware."""
    seen: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["wsgi.input"].read())
        start_response("200 OK", [])
        return [b"ok"]

    status: list[str] = []
    check = SignatureCheck(app, KEYS, clock=lambda: now or datetime.now(UTC))
    answer = b"".join(check(env, lambda s, h: status.append(s)))
    return status[0], (seen[0] if seen else b""), answer


def presigned(method: str = "get_object", secret: str = "kinfer-secret", expires: int = 60, **params: Any) -> str:
    client = boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id="kinfer",
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    return str(
        client.generate_presigned_url(
            method, Params={"Bucket": "b", "Key": "dir/a b+c.jsonl", **params}, ExpiresIn=expires
        )
    )


def signed(method: str, url: str, body: bytes = b"", secret: str = "kinfer-secret") -> dict[str, str]:
    request = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/x-ndjson"})
    S3SigV4Auth(Credentials("kinfer", secret), "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def test_a_good_presigned_url_passes_and_a_tampered_one_does_not() -> None:
    url = presigned()
    assert call(environ("GET", url, {}))[0] == "200 OK"
    for bad in (
        url.replace("a%20b", "a%20x"),  # another key
        url.replace("X-Amz-Expires=60", "X-Amz-Expires=600"),  # a longer life
        url[:-1] + ("0" if url[-1] != "0" else "1"),  # the signature itself
        presigned(secret="wrong"),
    ):
        status, _, answer = call(environ("GET", bad, {}))
        assert status.startswith("403") and b"<Code>SignatureDoesNotMatch</Code>" in answer
    status, _, answer = call(environ("PUT", url, {}))  # a GET URL used for a PUT
    assert status.startswith("403") and b"SignatureDoesNotMatch" in answer
    status, _, answer = call(environ("GET", url, {"Host": "localhost:9000"}))  # signed for another host
    assert status.startswith("403")


def test_an_expired_presigned_url_is_refused() -> None:
    url = presigned(expires=60)
    status, _, answer = call(environ("GET", url, {}), now=datetime.now(UTC) + timedelta(seconds=120))
    assert status.startswith("403") and b"<Code>AccessDenied</Code><Message>Request has expired</Message>" in answer
    status, _, answer = call(
        environ("HEAD", url.replace("get", "head"), {}), now=datetime.now(UTC) + timedelta(hours=1)
    )
    assert status.startswith("403") and answer == b""


def test_a_presigned_put_with_its_content_type_passes() -> None:
    url = presigned("put_object", ContentType="application/x-ndjson")
    assert call(environ("PUT", url, {"Content-Type": "application/x-ndjson"}, b'{"x":1}\n'))[:2] == (
        "200 OK",
        b'{"x":1}\n',
    )


def test_header_signatures_body_hashes_and_clock_skew() -> None:
    url, body = f"{ENDPOINT}/b/dir/a%20b.jsonl?uploads=&x-id=Put", b'{"x":1}\n'
    headers = signed("PUT", url, body)
    assert call(environ("PUT", url, headers, body))[:2] == ("200 OK", body), "the app still reads the whole body"
    status, _, answer = call(environ("PUT", url, headers, b'{"x":2}\n'))
    assert status.startswith("400") and b"XAmzContentSHA256Mismatch" in answer
    status, _, answer = call(environ("PUT", url, signed("PUT", url, body, secret="wrong"), body))
    assert status.startswith("403") and b"SignatureDoesNotMatch" in answer
    status, _, answer = call(environ("PUT", url, headers, body), now=datetime.now(UTC) + timedelta(minutes=20))
    assert status.startswith("403") and b"RequestTimeTooSkewed" in answer


@pytest.mark.parametrize(
    "headers,code",
    [
        ({}, b"AccessDenied"),  # unsigned
        ({"Authorization": "AWS kinfer:c2lnbmF0dXJl"}, b"InvalidArgument"),  # SigV2
    ],
)
def test_unsigned_and_old_style_requests_are_refused(headers: dict[str, str], code: bytes) -> None:
    status, _, answer = call(environ("GET", f"{ENDPOINT}/b/k", headers))
    assert status[:1] in ("4",) and b"<Code>" + code + b"</Code>" in answer


def test_an_unknown_access_key_is_refused() -> None:
    url = presigned().replace("Credential=kinfer", "Credential=other")
    status, _, answer = call(environ("GET", url, {}))
    assert status.startswith("403") and b"InvalidAccessKeyId" in answer


def test_a_cors_preflight_needs_no_signature_as_on_s3() -> None:
    env = environ(
        "OPTIONS", f"{ENDPOINT}/b/k", {"Origin": "http://localhost:8080", "Access-Control-Request-Method": "PUT"}
    )
    assert call(env)[0] == "200 OK"


def test_an_absolute_form_request_target_is_signed_by_its_path() -> None:
    url = presigned()
    env = environ("GET", url, {})
    env["RAW_URI"] = url
    assert call(env)[0] == "200 OK"


def test_garbage_in_the_signature_fields_is_a_refusal_not_a_crash() -> None:
    url = presigned()
    for bad, code in (
        (url.split("X-Amz-Signature=")[0] + "X-Amz-Signature=%C3%A9", b"SignatureDoesNotMatch"),
        (url.replace("X-Amz-Expires=60", "X-Amz-Expires=%D9%A3"), b"SignatureDoesNotMatch"),
        (url.replace("X-Amz-Date=", "X-Amz-Date=x"), b"AuthorizationQueryParametersError"),
        (
            url.replace("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-MD5"),
            b"AuthorizationQueryParametersError",
        ),
    ):
        status, _, answer = call(environ("GET", bad, {}))
        assert status[:1] == "4" and b"<Code>" + code + b"</Code>" in answer, answer
