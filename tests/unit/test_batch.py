"""Unit tests of the batch domain logic that needs no services."""

from __future__ import annotations

import base64
import json
import uuid
from types import SimpleNamespace

import pytest
from cloudevents.http import CloudEvent

from shared.batch import jobs as batch

from shared.batch import intake as batch_intake

from shared.batch import results as batch_results

from shared.batch import worker as batch_worker
from shared.web.events import event_error_status
from shared.errors import (BackendError, BackendTimeout, CircuitOpen, Conflict, InvalidInput, NotFound,
                           RateLimited, Unavailable, Unprocessable)

JOB = uuid.uuid4()


def chunk_event(**data: object) -> CloudEvent:
    base = {"job_id": str(JOB), "chunk": 2, "start": 2000, "count": 3, "bucket": "in", "key": "k"}
    base.update(data)
    return CloudEvent({"type": "dev.kinfer.batch.chunk.v1", "source": "/t"}, base)


def test_chunk_ref_parses_event_data() -> None:
    ref = batch_worker.ChunkRef.from_event(chunk_event())
    assert (ref.job_id, ref.chunk, ref.start, ref.count, ref.bucket, ref.key) == (JOB, 2, 2000, 3, "in", "k")


@pytest.mark.parametrize("data", [{"job_id": "nope"}, {"chunk": "x"}, {"count": 0}, {"start": -1}])
def test_chunk_ref_rejects_bad_data(data: dict) -> None:
    with pytest.raises(InvalidInput):
        batch_worker.ChunkRef.from_event(chunk_event(**data))


def test_chunk_ref_rejects_non_object_data() -> None:
    with pytest.raises(InvalidInput):
        batch_worker.ChunkRef.from_event(CloudEvent({"type": "t", "source": "/s"}, [1, 2]))


@pytest.mark.parametrize("exc,status", [
    (Unavailable("x"), 503), (CircuitOpen("x"), 503), (BackendTimeout("x"), 504), (RateLimited("x"), 429),
    (BackendError("x"), 503), (InvalidInput("x"), 400), (NotFound("x"), 422), (Conflict("x"), 422),
    (Unprocessable("x"), 422),
])
def test_event_status_never_404_or_409(exc: Exception, status: int) -> None:
    assert event_error_status(exc) == status


def test_owner_of_principal_or_anonymous() -> None:
    assert batch.owner_of(None) == "anonymous"
    assert batch.owner_of(SimpleNamespace(key_id="k-1")) == "k-1"
    assert batch.owner_of(SimpleNamespace(key_id=None)) == "anonymous"


def test_parse_and_rows_mark_bad_lines() -> None:
    items, bad = batch_worker._parse([b'{"data":[1]}', b"not json", b"[1,2]"])
    assert items == [{"data": [1]}, None, None] and bad == 2
    assert "not valid JSON" in batch_worker._row(5, None, b"not json")["error"]
    assert "JSON object" in batch_worker._row(6, None, b"[1,2]")["error"]
    ok = SimpleNamespace(prediction="setosa", outputs={"label": [0]}, error=None)
    assert batch_worker._row(7, ok, b"{}") == {"index": 7, "prediction": "setosa", "outputs": {"label": [0]}}
    failed = SimpleNamespace(prediction=None, outputs=None, error="input is empty")
    assert batch_worker._row(8, failed, b"{}") == {"index": 8, "error": "input is empty"}


def test_dead_reason_uses_knative_extensions() -> None:
    event = chunk_event()
    event["knativeerrorcode"] = "503"
    event["knativeerrordata"] = base64.b64encode(json.dumps({"error": "Triton is down"}).encode()).decode()
    assert batch_worker.dead_reason(event) == ("chunk delivery failed after all retries (last status 503): "
                                               "Triton is down")
    assert batch_worker.dead_reason(chunk_event()).endswith("(no response)")


@pytest.mark.parametrize("key,expected", [
    ("incoming/iris_classifier/a.jsonl", ("in", "incoming/iris_classifier/a.jsonl", "iris_classifier", None)),
    ("incoming/iris/1.0/b.jsonl", ("in", "incoming/iris/1.0/b.jsonl", "iris", "1.0")),
    ("incoming/iris/my+file.jsonl", ("in", "incoming/iris/my file.jsonl", "iris", None)),
])
def test_object_target_reads_model_from_key(key: str, expected: tuple) -> None:
    record = {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "in"}, "object": {"key": key}}}
    assert batch_intake.object_target(record, "in") == expected


@pytest.mark.parametrize("name,bucket,key", [
    ("s3:ObjectRemoved:Delete", "in", "incoming/m/a.jsonl"),
    ("s3:ObjectCreated:Put", "other", "incoming/m/a.jsonl"),
    ("s3:ObjectCreated:Put", "in", "batch-inputs/j/chunk-00000.jsonl"),
    ("s3:ObjectCreated:Put", "in", "incoming/m/a.csv"),
    ("s3:ObjectCreated:Put", "in", "incoming/a.jsonl"),
])
def test_object_target_ignores_other_objects(name: str, bucket: str, key: str) -> None:
    record = {"eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
    assert isinstance(batch_intake.object_target(record, "in"), str)


def test_records_bare_or_wrapped() -> None:
    records = {"Records": [{"eventName": "x"}]}
    assert batch_intake._records(records) == [{"eventName": "x"}]
    assert batch_intake._records({"value": records}) == [{"eventName": "x"}]
    assert batch_intake._records({"model": "m"}) is None


def test_chunked_splits_in_order() -> None:
    assert list(batch._chunked(iter([b"1", b"2", b"3", b"4", b"5"]), 2)) == [[b"1", b"2"], [b"3", b"4"], [b"5"]]


def test_input_source_validation() -> None:
    settings = SimpleNamespace(batch_max_items=10, s3_input_bucket="in")
    for body in ({"model": "m"}, {"model": "m", "inputs": [], }, {"model": "m", "inputs": {"data": 1}},
                 {"model": "m", "inputs": [{}], "input_url": "s3://in/uploads/me/k"}):
        with pytest.raises(InvalidInput):
            batch._input_source(body, settings, ("uploads/me/",))
    with pytest.raises(InvalidInput, match="limit is 2"):
        batch._input_source({"inputs": [{}, {}, {}]}, SimpleNamespace(batch_max_items=2), ())
    with pytest.raises(InvalidInput):
        batch._input_source({"input_url": "http://b/k"}, settings, ("uploads/me/",))
    lines = list(batch._input_source({"inputs": [{"data": [1.5]}, {}]}, settings, ())(None))
    assert lines == [b'{"data":[1.5]}', b"{}"]


@pytest.mark.parametrize("url", [
    "s3://in/uploads/other/x.jsonl", "s3://in/batch-inputs/job/chunk-00000.jsonl", "s3://elsewhere/uploads/me/x",
    "s3://in/uploads/me/../other/x.jsonl", "s3://in/uploads/me//x", "s3://in/uploads/me/./x", "s3://in/uploads/me",
    "s3://in/uploads/mex/y.jsonl", "s3://in/incoming/m/x.jsonl",
])
def test_input_url_outside_the_callers_prefix_is_400_from_the_url_alone(url: str) -> None:
    with pytest.raises(InvalidInput, match="upload prefix s3://in/uploads/me/") as err:
        batch.readable_input(url, "in", (batch.upload_prefix("me"),))
    assert err.value.field == "input_url"


def test_input_url_inside_the_prefix_is_readable() -> None:
    assert batch.readable_input("s3://in/uploads/me/a/b.jsonl", "in", ("uploads/me/",)) == ("in", "uploads/me/a/b.jsonl")
    assert batch.readable_input("s3://in/incoming/m/x.jsonl", "in", ("uploads/me/", "incoming/"))[1] == \
        "incoming/m/x.jsonl"


class FakeS3:
    """Records multipart calls (the merge logic, not S3, is under test here)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.put: bytes | None = None
        self.completed = False

    def create_multipart_upload(self, **kw: object) -> dict:
        return {"UploadId": "u1"}

    def upload_part(self, Body: bytes, PartNumber: int, **kw: object) -> dict:  # noqa: N803
        self.parts.append(Body)
        return {"ETag": f"e{PartNumber}"}

    def complete_multipart_upload(self, MultipartUpload: dict, **kw: object) -> None:  # noqa: N803
        assert [p["PartNumber"] for p in MultipartUpload["Parts"]] == list(range(1, len(self.parts) + 1))
        self.completed = True

    def put_object(self, Body: bytes, **kw: object) -> None:  # noqa: N803
        self.put = Body


def test_upload_small_is_one_put(monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = FakeS3()
    upload = batch_results._Upload(s3, "b", "k")
    upload.write(b"a\n")
    upload.write(b"b\n")
    upload.close()
    assert s3.put == b"a\nb\n" and not s3.parts


def test_upload_large_uses_bounded_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_results, "PART_SIZE", 10)
    s3 = FakeS3()
    upload = batch_results._Upload(s3, "b", "k")
    for _ in range(5):
        upload.write(b"0123456\n")
    upload.close()
    assert s3.completed and b"".join(s3.parts) == b"0123456\n" * 5
    assert all(len(p) < 20 for p in s3.parts)
