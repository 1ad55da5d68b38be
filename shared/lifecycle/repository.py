"""The S3 model repository (MODEL_REPOSITORY_URI): ``<prefix>/<triton_model>/<n>/...``.

Triton's own repository layout: ``<prefix>/<triton_model>/config.pbtxt`` (and model-level
files such as ``labels.txt``) beside one folder per integer version. Pushed versions are
written here; the model agent beside each Triton mirrors what its Triton must load into a
local folder. Uploads in flight are staged under ``.kinfer-uploads/`` (never a model folder).
Every S3 call goes through ``shared.clients.storage`` translation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypedDict

from shared.clients.storage import OCTET_TYPE, ensure_buckets, parse_s3_url, translated
from shared.errors import InvalidInput
from shared.settings import Settings

PART_BYTES = 8 * 1024 * 1024  # S3 wants >= 5 MiB per part but the last
STAGING = ".kinfer-uploads"
ARTIFACTS = ".kinfer-artifacts"  # uploaded packages, kept beside the repository


@dataclass(frozen=True)
class Layout:
    """Where a Triton model and its versions live in the repository bucket."""

    bucket: str
    prefix: str

    @classmethod
    def of(cls, settings: Settings) -> Layout:
        rest = settings.model_repository_uri.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        return cls(bucket, prefix.strip("/"))

    def model_prefix(self, triton_model: str) -> str:
        return f"{self.prefix}/{triton_model}/" if self.prefix else f"{triton_model}/"

    def version_prefix(self, triton_model: str, version: int) -> str:
        return f"{self.model_prefix(triton_model)}{version}/"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def package_key(self, triton_model: str, version: int) -> str:
        """Where an uploaded ``.tar.gz`` package of a version is kept (outside every model folder)."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        return f"{prefix}{ARTIFACTS}/{triton_model}/{version}/package.tar.gz"

    def key_of(self, uri: str) -> str:
        """The key of ``uri``, an object of the repository bucket (``uri``'s inverse)."""
        return uri.removeprefix(f"s3://{self.bucket}/")

    def staging_key(self) -> str:
        return f"{STAGING}/{uuid.uuid4().hex}"


def ensure_bucket(client: Any, layout: Layout) -> None:
    ensure_buckets(client, layout.bucket)


def list_keys(client: Any, bucket: str, prefix: str) -> dict[str, int]:
    """{key: size} of every object under ``prefix``."""
    found: dict[str, int] = {}
    with translated(f"listing of s3://{bucket}/{prefix}"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.update({o["Key"]: int(o["Size"]) for o in page.get("Contents", [])})
    return found


def numeric_versions(client: Any, layout: Layout, triton_model: str) -> list[int]:
    """Version folders present under the Triton model's prefix (whoever wrote them)."""
    prefix = layout.model_prefix(triton_model)
    with translated(f"listing of {layout.uri(prefix)}"):
        page = client.list_objects_v2(Bucket=layout.bucket, Prefix=prefix, Delimiter="/")
    names = [p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
    return sorted(int(n) for n in names if n.isdigit())


def holds_anything(client: Any, layout: Layout, triton_model: str) -> bool:
    """Whether any object lies under the Triton model's prefix (False when the bucket does not exist)."""
    from shared.errors import NotFound

    prefix = layout.model_prefix(triton_model)
    try:
        with translated(f"listing of {layout.uri(prefix)}"):
            page = client.list_objects_v2(Bucket=layout.bucket, Prefix=prefix, MaxKeys=1)
    except NotFound:
        return False
    return bool(page.get("Contents"))


def upload_file(client: Any, path: Path, bucket: str, key: str) -> None:
    """Upload a local file (boto3's managed transfer: multipart for big files, bounded memory)."""
    with translated(f"upload to s3://{bucket}/{key}"):
        client.upload_file(str(path), bucket, key, ExtraArgs={"ContentType": OCTET_TYPE})


def put(client: Any, bucket: str, key: str, data: bytes) -> None:
    with translated(f"upload to s3://{bucket}/{key}"):
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=OCTET_TYPE, ContentLength=len(data))


def copy(client: Any, source: tuple[str, str], bucket: str, key: str) -> None:
    """Server-side copy (managed: multipart for big objects)."""
    with translated(f"copy of s3://{source[0]}/{source[1]}"):
        client.copy({"Bucket": source[0], "Key": source[1]}, bucket, key)


def delete_keys(client: Any, bucket: str, keys: list[str]) -> None:
    with translated(f"delete in s3://{bucket}"):
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            if batch:
                client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})


def bucket_of(uri: str, field: str) -> str:
    """The bucket ``uri`` names (no request); InvalidInput when it does not look like s3://bucket/key."""
    try:
        bucket, _ = parse_s3_url(uri)
    except InvalidInput:
        raise InvalidInput(f"{field} must look like s3://bucket/key", field=field) from None
    return bucket


def head_size(client: Any, uri: str, field: str) -> tuple[str, str, int]:
    """(bucket, key, size) of ``uri``; InvalidInput when it is not an object the platform can read."""
    bucket_of(uri, field)
    bucket, key = parse_s3_url(uri)
    from shared.errors import NotFound

    try:
        with translated(uri):
            head = client.head_object(Bucket=bucket, Key=key)
    except NotFound:
        raise InvalidInput(
            f"there is no object at {uri[:300]} (or the platform cannot read it)",
            field=field,
            code="artifact_not_found",
        ) from None
    return bucket, key, int(head["ContentLength"])


def download(client: Any, bucket: str, key: str, path: Path) -> None:
    with translated(f"s3://{bucket}/{key}"):
        client.download_file(bucket, key, str(path))


def mirror(client: Any, bucket: str, prefix: str, target: Path, skip: tuple[str, ...] = ()) -> int:
    """Download every object under ``prefix`` into ``target`` (replaced atomically); files written.

    Keys beginning with one of ``skip`` (relative to ``prefix``) are left out.
    """
    keys = list_keys(client, bucket, prefix)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    written = 0
    try:
        for key in sorted(keys):
            rel = key[len(prefix) :]
            if not rel or rel.endswith("/") or rel.startswith(skip) or ".." in rel.split("/"):
                continue
            local = staging / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            download(client, bucket, key, local)
            written += 1
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


class UploadedPart(TypedDict):
    """One part of a multipart upload, as S3's CompleteMultipartUpload lists it."""

    ETag: str
    PartNumber: int


class MultipartWriter:
    """One S3 multipart upload fed part by part (blocking calls: run them off the event loop)."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.parts: list[UploadedPart] = []
        with translated(f"upload to s3://{bucket}/{key}"):
            self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=OCTET_TYPE)["UploadId"]

    def part(self, data: bytes) -> None:
        number = len(self.parts) + 1
        call = partial(
            self.client.upload_part,
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=data,
        )
        with translated(f"upload to s3://{self.bucket}/{self.key}"):
            etag = call()["ETag"]
        self.parts.append({"ETag": etag, "PartNumber": number})

    def complete(self) -> None:
        if not self.parts:
            self.part(b"")
        with translated(f"upload to s3://{self.bucket}/{self.key}"):
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
            )

    def abort(self) -> None:
        """Drop the parts sent so far (best effort: the bucket's lifecycle rule is the backstop)."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception:  # already gone or storage down: nothing visible was created either way
            pass
