"""Reading an ``input_url`` object: lines in linear time, a bound per line and per object (issue 20)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.response import StreamingBody

from shared.batch.jobs import BatchJobs, bounded_lines
from shared.errors import InvalidInput


def test_lines_split_over_chunks_are_joined_and_stripped():
    chunks = [b'{"a"', b":1}\r\n\n  \n{", b'"b":2}\n{"c":3}']
    assert list(bounded_lines(chunks, 64, 1024)) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    assert list(bounded_lines([b"", b"\n\n"], 64, 1024)) == []


def test_a_line_over_the_bound_is_refused_naming_it_before_the_rest_is_read():
    read: list[int] = []

    def chunks() -> Iterator[bytes]:
        yield b'{"ok":1}\n\n'
        for i in range(1000):
            read.append(i)
            yield b"x" * 100
        yield b"\n"

    with pytest.raises(InvalidInput) as caught:
        list(bounded_lines(chunks(), 250, 10**9))
    assert "line 3 " in caught.value.message and "250 bytes" in caught.value.message
    assert "BATCH_MAX_LINE_BYTES" in caught.value.message and caught.value.field == "input_url"
    assert len(read) == 3  # stopped at the first chunk past the bound
    with pytest.raises(InvalidInput, match="line 1 "):
        list(bounded_lines([b"y" * 300 + b"\n"], 250, 10**9))  # also within one chunk
    assert list(bounded_lines([b"z" * 250 + b"\n"], 250, 10**9)) == [b"z" * 250]  # the bound itself is fine


def test_a_stream_over_the_total_bound_is_refused():
    with pytest.raises(InvalidInput, match="BATCH_MAX_INPUT_BYTES"):
        list(bounded_lines([b"{}\n" * 100] * 10, 64, 2000))


def test_reading_one_huge_line_is_linear_in_its_size():
    """botocore's iter_lines re-joined the pending bytes at every chunk: a 64 MiB line in 64 KiB chunks
    copied about 32 GiB (the probe: 384 MiB, 76 s of CPU). Here each byte is copied once or twice."""
    chunk = b"a" * 65536
    started = time.perf_counter()
    lines = list(bounded_lines([chunk] * 1024 + [b"\n"], 2**30, 2**31))
    elapsed = time.perf_counter() - started
    assert len(lines) == 1 and len(lines[0]) == 2**26
    assert elapsed < 2.0, elapsed


def _jobs(data: bytes, declared: int | None = None, **limits: int) -> tuple[BatchJobs, io.BytesIO]:
    """BatchJobs reading ``data`` through botocore's own StreamingBody (what get_object returns)."""
    raw = io.BytesIO(data)
    body = StreamingBody(raw, len(data))
    s3 = SimpleNamespace(
        get_object=lambda **_: {"Body": body, "ContentLength": len(data) if declared is None else declared}
    )
    settings = SimpleNamespace(**{"batch_max_line_bytes": 1024, "batch_max_input_bytes": 10**6, **limits})
    jobs: Any = BatchJobs.__new__(BatchJobs)
    jobs.s3, jobs.settings = s3, settings
    return jobs, raw


def test_s3_lines_refuses_an_object_over_its_size_bound_before_reading_it():
    jobs, raw = _jobs(b"{}\n" * 10, declared=2 * 10**6)
    with pytest.raises(InvalidInput, match=r"2000000 bytes; the limit is 1000000 \(BATCH_MAX_INPUT_BYTES\)"):
        list(jobs._s3_lines("in", "k", 100))
    assert raw.closed


def test_s3_lines_streams_bounded_lines_and_closes_the_body():
    jobs, raw = _jobs(b'{"data":[1]}\n' * 3 + b"q" * 2000 + b"\n", batch_max_line_bytes=1024)
    lines = jobs._s3_lines("in", "k", 100)
    assert [next(lines) for _ in range(3)] == [b'{"data":[1]}'] * 3
    with pytest.raises(InvalidInput, match="line 4 of input_url is longer than 1024 bytes"):
        next(lines)
    assert raw.closed


def test_upload_grants_require_a_size_and_sign_it_as_content_length() -> None:
    """The presigned PUT had no size bound (issue 20): ``size`` is required, at most BATCH_MAX_INPUT_BYTES,
    and signed into the URL (S3 and MinIO refuse a PUT of another length)."""
    asked: list[dict[str, Any]] = []

    def presign(op: str, Params: dict[str, Any], ExpiresIn: int) -> str:  # noqa: N803 - boto3's names
        asked.append(Params)
        return "http://s3/in/k?X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost"

    jobs: Any = BatchJobs.__new__(BatchJobs)
    jobs.s3_presigner = SimpleNamespace(generate_presigned_url=presign)
    jobs.ensure_buckets = lambda: None
    jobs.settings = SimpleNamespace(batch_max_input_bytes=4096, s3_input_bucket="in", result_url_expiry_s=60)
    for body in ({}, {"size": 0}, {"size": 4097}, {"size": True}, {"size": "10"}, None):
        with pytest.raises(InvalidInput) as caught:
            jobs.create_upload(body, "key-1")
        assert caught.value.field == "size" and "BATCH_MAX_INPUT_BYTES" in caught.value.message
    grant = jobs.create_upload({"filename": "a.jsonl", "size": 4096}, "key-1")
    assert asked[-1]["ContentLength"] == 4096 and asked[-1]["ContentType"] == "application/x-ndjson"
    assert grant["headers"] == {"Content-Type": "application/x-ndjson", "Content-Length": "4096"}
