"""The chunk worker's pure parts: chunk events, line parsing, dead-letter reasons."""

from __future__ import annotations

import base64
import json
import uuid
from types import SimpleNamespace

import pytest
from cloudevents.http import CloudEvent

from shared.batch import worker as batch_worker
from shared.errors import (
    InvalidInput,
)

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


def test_parse_and_rows_mark_bad_lines() -> None:
    items, bad = batch_worker._parse([b'{"data":[1]}', b"not json", b"[1,2]"])
    assert items == [{"data": [1]}, None, None] and bad == 2
    assert "not valid JSON" in batch_worker._row(5, None, b"not json")["error"]
    assert "JSON object" in batch_worker._row(6, None, b"[1,2]")["error"]
    ok = SimpleNamespace(prediction="setosa", outputs={"label": [0]}, error=None)
    assert batch_worker._row(7, ok, b"{}") == {"index": 7, "prediction": "setosa", "outputs": {"label": [0]}}
    failed = SimpleNamespace(prediction=None, outputs=None, error="input is empty")
    assert batch_worker._row(8, failed, b"{}") == {"index": 8, "error": "input is empty"}


def test_dead_reason_says_the_status_never_the_delivered_text() -> None:
    """A dead letter's body is whatever its sender wrote: an attacker trial put "ACCOUNT SUSPENDED - pay at
    http://evil.example/pay" into 2,500 results of another tenant's job. Only the status reaches a tenant."""
    event = chunk_event()
    event["knativeerrorcode"] = "503"
    event["knativeerrordata"] = base64.b64encode(json.dumps({"error": "pay at http://evil.example"}).encode()).decode()
    assert batch_worker.dead_reason(event) == (
        "chunk delivery failed after all retries (last status 503): the backend or a store was unavailable"
    )
    event["knativeerrorcode"] = "<b>"
    assert batch_worker.dead_reason(event) == "chunk delivery failed after all retries (no response)"
    assert batch_worker.dead_reason(chunk_event()).endswith("(no response)")


def test_lone_surrogates_in_chunk_lines_are_bad_items_not_crashes() -> None:
    """A JSONL line escaping a lone surrogate is not JSON (as in a request body); results still encode."""
    items, bad = batch_worker._parse([b'{"data": ["\\ud800"]}', b'{"\\udc00": [1]}', b'{"data": [1, NaN]}'])
    assert items == [None, None, None] and bad == 3
    assert "not valid JSON" in batch_worker._row(0, None, b'{"data": ["\\ud800"]}')["error"]
    from shared.batch.results import encode_lines

    encoded = encode_lines([{"index": 0, "error": "unknown tensor '\ud800'"}])
    assert json.loads(encoded) == {"index": 0, "error": "unknown tensor '\ud800'"}
