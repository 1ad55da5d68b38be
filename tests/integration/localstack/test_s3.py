"""The local S3 server keeps buckets and objects across restarts when it has a data folder."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import boto3
import pytest

from shared.localstack import procs
from shared.localstack.s3 import SNAPSHOT_INTERVAL_S, S3Server
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def client(url: str):  # noqa: ANN201 - a boto3 client
    return boto3.client(
        "s3", endpoint_url=url, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
    )


def test_objects_survive_a_restart_and_deletes_stay_deleted(tmp_path: Path) -> None:
    server = S3Server(port=free_port(), data_dir=tmp_path / "s3")
    pid = server.spawn(tmp_path / "s3.log")
    s3 = client(server.url)
    s3.create_bucket(Bucket="kept")
    big = os.urandom(6 * 1024 * 1024) + b"tail"
    upload = s3.create_multipart_upload(Bucket="kept", Key="big.bin")["UploadId"]
    etags = [
        s3.upload_part(Bucket="kept", Key="big.bin", UploadId=upload, PartNumber=n, Body=part)["ETag"]
        for n, part in ((1, big[: 5 * 1024 * 1024]), (2, big[5 * 1024 * 1024 :]))
    ]
    s3.complete_multipart_upload(
        Bucket="kept",
        Key="big.bin",
        UploadId=upload,
        MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, 1)]},
    )
    s3.put_object(Bucket="kept", Key="dir/a b.jsonl", Body=b'{"x":1}\n', ContentType="application/x-ndjson")
    s3.put_object(Bucket="kept", Key="gone.txt", Body=b"bye")
    s3.delete_object(Bucket="kept", Key="gone.txt")
    before = {k: s3.head_object(Bucket="kept", Key=k)["ETag"] for k in ("big.bin", "dir/a b.jsonl")}
    procs.stop(pid)  # SIGTERM: the server saves before it exits

    pid = server.spawn(tmp_path / "s3.log")
    try:
        assert s3.get_object(Bucket="kept", Key="big.bin")["Body"].read() == big
        small = s3.get_object(Bucket="kept", Key="dir/a b.jsonl")
        assert small["Body"].read() == b'{"x":1}\n' and small["ContentType"] == "application/x-ndjson"
        assert {k: s3.head_object(Bucket="kept", Key=k)["ETag"] for k in before} == before
        listed = [o["Key"] for o in s3.list_objects_v2(Bucket="kept")["Contents"]]
        assert sorted(listed) == ["big.bin", "dir/a b.jsonl"]
        # a kill -9 loses at most the last snapshot interval
        s3.put_object(Bucket="kept", Key="late.txt", Body=b"late")
        time.sleep(SNAPSHOT_INTERVAL_S * 2 + 0.5)
        os.kill(pid, signal.SIGKILL)
        procs.stop(pid)
        pid = server.spawn(tmp_path / "s3.log")
        assert s3.get_object(Bucket="kept", Key="late.txt")["Body"].read() == b"late"
    finally:
        procs.stop(pid)


def test_without_a_data_folder_nothing_is_kept(tmp_path: Path) -> None:
    server = S3Server(port=free_port())
    pid = server.spawn(tmp_path / "s3.log")
    client(server.url).create_bucket(Bucket="temp")
    procs.stop(pid)
    pid = server.spawn(tmp_path / "s3.log")
    try:
        assert client(server.url).list_buckets()["Buckets"] == []
    finally:
        procs.stop(pid)


def test_with_keys_signatures_are_checked_and_presigned_urls_expire(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    from botocore.config import Config
    from botocore.exceptions import ClientError

    server = S3Server(port=free_port(), keys={"kinfer": "kinfer-secret"})
    pid = server.spawn(tmp_path / "s3.log")

    def keyed(secret: str):  # noqa: ANN202 - a boto3 client
        return boto3.client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id="kinfer",
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def fetch(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/x-ndjson"} if data is not None else {}
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    try:
        s3 = keyed("kinfer-secret")
        s3.create_bucket(Bucket="signed")
        s3.put_object(Bucket="signed", Key="in/a b.jsonl", Body=b'{"x":1}\n')
        with pytest.raises(ClientError) as err:
            keyed("wrong").get_object(Bucket="signed", Key="in/a b.jsonl")
        assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"

        good = s3.generate_presigned_url("get_object", Params={"Bucket": "signed", "Key": "in/a b.jsonl"}, ExpiresIn=60)
        assert fetch(good) == (200, b'{"x":1}\n')
        for tampered in (
            good.replace("a%20b", "a%20c"),
            good.replace("X-Amz-Expires=60", "X-Amz-Expires=3600"),
            good[:-4] + ("0000" if not good.endswith("0000") else "1111"),
        ):
            status, body = fetch(tampered)
            assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body, body
        status, body = fetch(good.split("?")[0])  # no signature at all
        assert status == 403 and b"<Code>AccessDenied</Code>" in body

        put = s3.generate_presigned_url(
            "put_object",
            Params={"Bucket": "signed", "Key": "up.jsonl", "ContentType": "application/x-ndjson"},
            ExpiresIn=60,
        )
        assert fetch(put, "PUT", b"uploaded\n")[0] == 200
        assert s3.get_object(Bucket="signed", Key="up.jsonl")["Body"].read() == b"uploaded\n"
        assert fetch(put.replace("up.jsonl", "other.jsonl"), "PUT", b"x")[0] == 403

        short = s3.generate_presigned_url("get_object", Params={"Bucket": "signed", "Key": "in/a b.jsonl"}, ExpiresIn=1)
        time.sleep(2.1)
        status, body = fetch(short)
        assert status == 403 and b"<Code>AccessDenied</Code><Message>Request has expired</Message>" in body, body
    finally:
        procs.stop(pid)
