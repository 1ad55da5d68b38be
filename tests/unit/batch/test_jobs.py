"""Batch submit without services: input sources, chunking, input_url confinement."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

from shared.batch import jobs as batch
from shared.errors import (
    InvalidInput,
)

JOB = uuid.uuid4()


def test_owner_of_principal_or_anonymous() -> None:
    from shared.domain import owner_of

    assert owner_of(None) == "anonymous"
    assert owner_of(SimpleNamespace(key_id="k-1")) == "k-1"
    assert owner_of(SimpleNamespace(key_id=None)) == "anonymous"


def test_chunked_splits_in_order() -> None:
    assert list(batch._chunked(iter([b"1", b"2", b"3", b"4", b"5"]), 2)) == [[b"1", b"2"], [b"3", b"4"], [b"5"]]


def test_input_source_validation() -> None:
    settings = SimpleNamespace(batch_max_items=10, s3_input_bucket="in")
    for body in (
        {"model": "m"},
        {
            "model": "m",
            "inputs": [],
        },
        {"model": "m", "inputs": {"data": 1}},
        {"model": "m", "inputs": [{}], "input_url": "s3://in/uploads/me/k"},
    ):
        with pytest.raises(InvalidInput):
            batch._input_source(body, settings, ("uploads/me/",))
    with pytest.raises(InvalidInput, match="limit is 2"):
        batch._input_source({"inputs": [{}, {}, {}]}, SimpleNamespace(batch_max_items=2), ())
    with pytest.raises(InvalidInput):
        batch._input_source({"input_url": "http://b/k"}, settings, ("uploads/me/",))
    lines = list(batch._input_source({"inputs": [{"data": [1.5]}, {}]}, settings, ())(None))
    assert lines == [b'{"data":[1.5]}', b"{}"]


@pytest.mark.parametrize(
    "url",
    [
        "s3://in/uploads/other/x.jsonl",
        "s3://in/batch-inputs/job/chunk-00000.jsonl",
        "s3://elsewhere/uploads/me/x",
        "s3://in/uploads/me/../other/x.jsonl",
        "s3://in/uploads/me//x",
        "s3://in/uploads/me/./x",
        "s3://in/uploads/me",
        "s3://in/uploads/mex/y.jsonl",
        "s3://in/incoming/m/x.jsonl",
        "s3://Not_A..Bucket!/uploads/me/x.jsonl",
        "s3://" + "b" * 300 + "/uploads/me/x.jsonl",
    ],
)
def test_input_url_outside_the_callers_prefix_is_400_from_the_url_alone(url: str) -> None:
    with pytest.raises(InvalidInput, match="upload prefix s3://in/uploads/me/") as err:
        batch.readable_input(url, "in", (batch.upload_prefix("me"),))
    assert err.value.field == "input_url"


def test_input_url_inside_the_prefix_is_readable() -> None:
    readable = batch.readable_input("s3://in/uploads/me/a/b.jsonl", "in", ("uploads/me/",))
    assert readable == ("in", "uploads/me/a/b.jsonl")
    assert (
        batch.readable_input("s3://in/incoming/m/x.jsonl", "in", ("uploads/me/", "incoming/"))[1]
        == "incoming/m/x.jsonl"
    )


@pytest.mark.parametrize("url", ["s3://in/uploads/me/\ud800.jsonl", "s3://in/uploads/me/x\x00.jsonl"])
def test_input_url_with_unstorable_characters_is_400(url: str) -> None:
    with pytest.raises(InvalidInput) as err:
        batch._input_source(
            {"input_url": url}, SimpleNamespace(batch_max_items=10, s3_input_bucket="in"), ("uploads/me/",)
        )
    assert err.value.field == "input_url"
