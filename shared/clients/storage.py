"""S3 adapter: plain boto3 (MinIO in production, a local S3 server in dev).

botocore errors are translated here, once: a missing key or bucket becomes
``NotFound``, connection trouble ``Unavailable`` (retryable), anything else
``BackendError``. Every put sends an explicit ContentType.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from shared.domain import JSONObject
from shared.errors import BackendError, InvalidInput, NotFound, Unavailable
from shared.settings import Settings

log = logging.getLogger(__name__)

JSONL_TYPE = "application/x-ndjson"
OCTET_TYPE = "application/octet-stream"
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_UNAVAILABLE_CODES = {"SlowDown", "ServiceUnavailable", "503", "RequestTimeout", "InternalError"}
T = TypeVar("T")


def make_s3_client(settings: Settings, endpoint_url: str | None = None) -> Any:
    """A thread-safe boto3 S3 client for ``settings`` (path-style, bounded timeouts and retries).

    ``endpoint_url`` overrides S3_ENDPOINT_URL (the public endpoint, for presigning).
    """
    config = Config(
        region_name=settings.s3_region,
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        connect_timeout=3,
        read_timeout=30,
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=32,
    )
    keys = (
        {"aws_access_key_id": settings.s3_access_key_id, "aws_secret_access_key": settings.s3_secret_access_key}
        if settings.s3_credentials == "static"
        else {}  # ambient: boto3's default chain (web identity token, instance role)
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url or settings.s3_endpoint_url or None, config=config, **keys
    )


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn botocore exceptions raised inside the block into the Kinfer error tree."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND_CODES:
            raise NotFound(f"{what} not found") from exc
        if code in _UNAVAILABLE_CODES:
            raise Unavailable(f"object storage unavailable during {what}", retry_after=1) from exc
        raise BackendError(f"object storage error during {what}: {code or 'unknown'}") from exc
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, BotoConnectionError) as exc:
        raise Unavailable(f"object storage unreachable during {what}", retry_after=1) from exc
    except BotoCoreError as exc:
        raise BackendError(f"object storage error during {what}") from exc


def _call(what: str, fn: Callable[[], T]) -> T:
    with translated(what):
        return fn()


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into (bucket, key); InvalidInput when it is not one."""
    parts = urlsplit(url or "")
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key or parts.query or parts.fragment:
        raise InvalidInput("input_url must look like s3://bucket/key", field="input_url")
    return parts.netloc, key


def ensure_buckets(client: Any, *names: str) -> None:
    """Create each bucket unless it already exists (idempotent)."""
    for name in names:
        try:
            _call(f"bucket {name}", partial(client.head_bucket, Bucket=name))
        except NotFound:
            try:
                _call(f"create bucket {name}", partial(client.create_bucket, Bucket=name))
            except BackendError as exc:
                if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
                    raise


def put_bytes(client: Any, bucket: str, key: str, data: bytes, content_type: str = OCTET_TYPE) -> None:
    """Store ``data`` at bucket/key with an explicit ContentType."""
    _call(
        f"s3://{bucket}/{key}",
        lambda: client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type, ContentLength=len(data)),
    )


def get_bytes(client: Any, bucket: str, key: str) -> bytes:
    """The whole object at bucket/key (NotFound when missing)."""
    with translated(f"s3://{bucket}/{key}"):
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            found: bytes = body.read()
            return found
        finally:
            body.close()


def put_jsonl(client: Any, bucket: str, key: str, rows: Iterable[Mapping[str, object]]) -> int:
    """Store ``rows`` as JSON Lines; returns the number of rows written."""
    lines = [json.dumps(row, separators=(",", ":"), ensure_ascii=False) for row in rows]
    data = ("\n".join(lines) + "\n").encode() if lines else b""
    put_bytes(client, bucket, key, data, JSONL_TYPE)
    return len(lines)


def get_jsonl(client: Any, bucket: str, key: str) -> list[JSONObject]:
    """Read a JSON Lines object; InvalidInput names the first bad line."""
    rows: list[JSONObject] = []
    for number, line in enumerate(get_bytes(client, bucket, key).decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise InvalidInput(f"line {number} of s3://{bucket}/{key} is not valid JSON", field="input_url") from None
        if not isinstance(row, dict):
            raise InvalidInput(f"line {number} of s3://{bucket}/{key} is not a JSON object", field="input_url")
        rows.append(row)
    return rows


def exists(client: Any, bucket: str, key: str) -> bool:
    """Whether bucket/key exists (HEAD); Unavailable when storage cannot tell."""
    try:
        _call(f"s3://{bucket}/{key}", lambda: client.head_object(Bucket=bucket, Key=key))
    except NotFound:
        return False
    return True


def presign_get(client: Any, bucket: str, key: str, expires_s: int) -> str:
    """A presigned GET URL for bucket/key valid for ``expires_s`` seconds."""
    url: str = _call(
        f"presign s3://{bucket}/{key}",
        lambda: client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=int(expires_s)
        ),
    )
    return url


def presign_put(client: Any, bucket: str, key: str, expires_s: int, content_type: str, *, content_length: int) -> str:
    """A presigned PUT URL for bucket/key valid for ``expires_s`` seconds. ``Content-Type`` and
    ``Content-Length`` are signed headers: the upload must send exactly ``content_type`` and
    ``content_length`` bytes (S3 and MinIO answer 403 otherwise), so the URL bounds the object's size."""
    params = {"Bucket": bucket, "Key": key, "ContentType": content_type, "ContentLength": int(content_length)}
    url: str = _call(
        f"presign s3://{bucket}/{key}",
        lambda: client.generate_presigned_url("put_object", Params=params, ExpiresIn=int(expires_s)),
    )
    return url


def delete_prefix(client: Any, bucket: str, prefix: str) -> int:
    """Delete every object under ``prefix``; returns how many were deleted."""
    deleted = 0
    with translated(f"s3://{bucket}/{prefix}"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
                deleted += len(keys)
    return deleted


def list_keys(client: Any, bucket: str, prefix: str, limit: int) -> list[str]:
    """The keys under ``prefix`` in key order, at most ``limit`` + 1 (so a caller can tell there are more);
    none when the bucket does not exist."""
    found: list[str] = []
    try:
        with translated(f"s3://{bucket}/{prefix}"):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                found += [item["Key"] for item in page.get("Contents", [])]
                if len(found) > limit:
                    return found[: limit + 1]
    except NotFound:
        return []
    return found
