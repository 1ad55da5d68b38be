"""Batch intake: which S3 notifications become jobs."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from cloudevents.http import CloudEvent

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


class FakeJobs:
    """Records the submits BatchIntake asks for."""

    def __init__(self) -> None:
        self.submitted: list[tuple[Any, str, dict[str, Any]]] = []

    def submit_job(self, body: Any, owner: str, **kwargs: Any) -> dict[str, Any]:
        self.submitted.append((body, owner, kwargs))
        return {"id": str(JOB), "status": "pending"}


def test_intake_submits_one_job_per_incoming_object_through_the_injected_jobs() -> None:
    jobs = FakeJobs()
    intake = batch_intake.BatchIntake(jobs, SimpleNamespace(s3_input_bucket="in"))  # type: ignore[arg-type]
    created = {
        "eventName": "s3:ObjectCreated:Put",
        "s3": {"bucket": {"name": "in"}, "object": {"key": "incoming/m/2/a.jsonl"}},
    }
    other = {"eventName": "s3:ObjectRemoved:Delete", "s3": {"bucket": {"name": "in"}, "object": {"key": "x"}}}
    event = CloudEvent({"type": "s3.notification", "source": "/s3", "id": "e1"}, {"Records": [created, other]})
    answer = intake.intake(event)
    assert answer["jobs"] == [{"id": str(JOB), "status": "pending"}] and len(answer["ignored"]) == 1
    body, owner, kwargs = jobs.submitted[0]
    assert body == {"model": "m", "input_url": "s3://in/incoming/m/2/a.jsonl", "version": "2"}
    assert owner == "anonymous" and kwargs == {"intake_key": "/s3#e1#0", "readable": ("incoming/",)}


def test_request_event_owner_defaults_to_anonymous() -> None:
    jobs = FakeJobs()
    intake = batch_intake.BatchIntake(jobs, SimpleNamespace(s3_input_bucket="in"))  # type: ignore[arg-type]
    event = CloudEvent(
        {"type": "dev.kinfer.batch.request.v1", "source": "/t", "id": "r1"}, {"model": "m", "inputs": [{}]}
    )
    intake.intake(event)
    assert jobs.submitted == [
        ({"model": "m", "inputs": [{}]}, "anonymous", {"intake_key": "/t#r1", "readable": ("incoming/",)})
    ]


@pytest.mark.parametrize("owner", ["3f1c2a7e-0000-4000-8000-000000000001", "anonymous", None, 7])
def test_a_request_event_cannot_name_an_owner(owner: object) -> None:
    """Whoever can put an event on the topic is not thereby an API key: a forged event naming another key
    as owner creates no job for that key (nor any job)."""
    from shared.errors import InvalidInput

    jobs = FakeJobs()
    intake = batch_intake.BatchIntake(jobs, SimpleNamespace(s3_input_bucket="in"))  # type: ignore[arg-type]
    event = CloudEvent(
        {"type": "dev.kinfer.batch.request.v1", "source": "/t", "id": "r2"},
        {"model": "m", "inputs": [{}], "owner": owner},
    )
    with pytest.raises(InvalidInput) as refused:
        intake.intake(event)
    assert refused.value.field == "owner" and jobs.submitted == []
