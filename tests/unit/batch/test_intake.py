"""Batch intake: which S3 notifications become jobs."""

from __future__ import annotations

import uuid

import pytest

from shared.batch import intake as batch_intake

JOB = uuid.uuid4()


@pytest.mark.parametrize(
    "key,expected",
    [
        ("incoming/iris_classifier/a.jsonl", ("in", "incoming/iris_classifier/a.jsonl", "iris_classifier", None)),
        ("incoming/iris/1.0/b.jsonl", ("in", "incoming/iris/1.0/b.jsonl", "iris", "1.0")),
        ("incoming/iris/my+file.jsonl", ("in", "incoming/iris/my file.jsonl", "iris", None)),
    ],
)
def test_object_target_reads_model_from_key(key: str, expected: tuple) -> None:
    record = {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "in"}, "object": {"key": key}}}
    assert batch_intake.object_target(record, "in") == expected


@pytest.mark.parametrize(
    "name,bucket,key",
    [
        ("s3:ObjectRemoved:Delete", "in", "incoming/m/a.jsonl"),
        ("s3:ObjectCreated:Put", "other", "incoming/m/a.jsonl"),
        ("s3:ObjectCreated:Put", "in", "batch-inputs/j/chunk-00000.jsonl"),
        ("s3:ObjectCreated:Put", "in", "incoming/m/a.csv"),
        ("s3:ObjectCreated:Put", "in", "incoming/a.jsonl"),
    ],
)
def test_object_target_ignores_other_objects(name: str, bucket: str, key: str) -> None:
    record = {"eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
    assert isinstance(batch_intake.object_target(record, "in"), str)


def test_records_bare_or_wrapped() -> None:
    records = {"Records": [{"eventName": "x"}]}
    assert batch_intake._records(records) == [{"eventName": "x"}]
    assert batch_intake._records({"value": records}) == [{"eventName": "x"}]
    assert batch_intake._records({"model": "m"}) is None
