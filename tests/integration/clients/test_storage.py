"""The S3 adapter against a real S3 API server (moto server mode, in-process thread)."""

from __future__ import annotations

import socket
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from shared.clients.storage import (
    delete_prefix,
    ensure_buckets,
    get_bytes,
    get_jsonl,
    make_s3_client,
    parse_s3_url,
    presign_get,
    put_bytes,
    put_jsonl,
)
from shared.errors import InvalidInput, NotFound, Unavailable
from shared.localstack.s3 import PortBusy, S3Server
from shared.settings import Settings

pytestmark = pytest.mark.integration
PORT = 18110


@pytest.fixture(scope="module")
def server():
    srv = S3Server(port=PORT)
    srv.start(timeout=10)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return make_s3_client(Settings.from_env({}, s3_endpoint_url=server.url))


@pytest.fixture
def bucket(client):
    name = f"kinfer-test-{uuid.uuid4().hex[:12]}"
    ensure_buckets(client, name)
    yield name
    delete_prefix(client, name, "")
    client.delete_bucket(Bucket=name)


def test_ensure_buckets_is_idempotent(client, bucket):
    ensure_buckets(client, bucket, bucket)
    names = {b["Name"] for b in client.list_buckets()["Buckets"]}
    assert bucket in names


def test_jsonl_round_trip_keeps_rows_and_content_type(client, bucket):
    rows = [{"data": [1.0, 2.5]}, {"data": [], "note": "ünïcode"}]
    assert put_jsonl(client, bucket, "job/chunk-00000.jsonl", rows) == 2
    assert get_jsonl(client, bucket, "job/chunk-00000.jsonl") == rows
    head = client.head_object(Bucket=bucket, Key="job/chunk-00000.jsonl")
    assert head["ContentType"] == "application/x-ndjson"
    assert head["ContentLength"] > 0


def test_get_jsonl_names_the_bad_line(client, bucket):
    put_bytes(client, bucket, "bad.jsonl", b'{"a": 1}\nnot json\n', "application/x-ndjson")
    with pytest.raises(InvalidInput, match="line 2"):
        get_jsonl(client, bucket, "bad.jsonl")


def test_bytes_round_trip_and_missing_key_is_not_found(client, bucket):
    put_bytes(client, bucket, "blob", b"\x00\x01payload")
    assert get_bytes(client, bucket, "blob") == b"\x00\x01payload"
    with pytest.raises(NotFound):
        get_bytes(client, bucket, "missing")
    with pytest.raises(NotFound):
        get_bytes(client, f"no-such-{uuid.uuid4().hex[:8]}", "x")


def test_presigned_url_downloads_and_carries_the_expiry(client, bucket):
    put_bytes(client, bucket, "results/out.jsonl", b'{"ok":true}\n', "application/x-ndjson")
    url = presign_get(client, bucket, "results/out.jsonl", 900)
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["900"]
    assert "X-Amz-Signature" in query
    assert urlsplit(url).path == f"/{bucket}/results/out.jsonl"  # path-style addressing
    # moto does not verify signatures, so this proves only the URL shape and the route.
    assert requests.get(url, timeout=5).content == b'{"ok":true}\n'


def test_delete_prefix_removes_only_that_prefix(client, bucket):
    for i in range(3):
        put_bytes(client, bucket, f"job-a/chunk-{i}", b"x")
    put_bytes(client, bucket, "job-b/chunk-0", b"y")
    assert delete_prefix(client, bucket, "job-a/") == 3
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["job-b/chunk-0"]


@pytest.mark.parametrize(
    "url", ["s3://bucket", "s3://bucket/", "http://bucket/key", "s3:///key", "", "s3://bucket/key?x=1"]
)
def test_parse_s3_url_rejects_bad_urls(url):
    with pytest.raises(InvalidInput) as err:
        parse_s3_url(url)
    assert err.value.field == "input_url"


def test_parse_s3_url_splits_bucket_and_key():
    assert parse_s3_url("s3://inputs/job 1/a.jsonl") == ("inputs", "job 1/a.jsonl")


def test_unreachable_endpoint_is_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = make_s3_client(Settings.from_env({}, s3_endpoint_url=f"http://127.0.0.1:{port}"))
    with pytest.raises(Unavailable):
        get_bytes(dead, "b", "k")


def test_start_on_a_busy_port_fails_with_one_clear_line(server):
    with pytest.raises(PortBusy) as err:
        S3Server(port=server.port).start(timeout=2)
    assert str(err.value) == f"cannot start the S3 server: port 127.0.0.1:{PORT} is already in use"


def test_spawned_server_outlives_its_caller_and_stops_on_sigterm(tmp_path):
    import os
    import signal
    import time

    srv = S3Server(port=PORT + 1, state_dir=tmp_path / "s3")
    pid = srv.spawn()
    try:
        assert (tmp_path / "s3" / "s3.pid").read_text() == str(pid)
        assert os.getsid(pid) == pid  # its own session: `kinfer up` may exit
        client = make_s3_client(Settings.from_env({}, s3_endpoint_url=srv.url))
        ensure_buckets(client, "spawned")
        put_bytes(client, "spawned", "k", b"v")
        assert get_bytes(client, "spawned", "k") == b"v"
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while not os.waitpid(pid, os.WNOHANG)[0]:
        assert time.monotonic() < deadline, "the S3 server ignored SIGTERM"
        time.sleep(0.05)
