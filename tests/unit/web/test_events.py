"""CloudEvents in: parsing in both content modes, and the status codes that steer redelivery."""

from __future__ import annotations

import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from shared.batch.events import CHUNK_EVENT_TYPE
from shared.errors import (
    BackendError,
    BackendTimeout,
    CircuitOpen,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from shared.web.events import event_error_status, parse_event


@pytest.mark.parametrize(
    "exc,status",
    [
        (Unavailable("x"), 503),
        (CircuitOpen("x"), 503),
        (BackendTimeout("x"), 504),
        (RateLimited("x"), 429),
        (BackendError("x"), 503),
        (InvalidInput("x"), 400),
        (NotFound("x"), 422),
        (Conflict("x"), 422),
        (Unprocessable("x"), 422),
        (Unauthorized("x"), 401),  # an unauthenticated sender (EVENT_AUTH=oidc): not redelivered
        (Forbidden("x"), 403),
    ],
)
def test_event_status_never_404_or_409(exc: Exception, status: int) -> None:
    assert event_error_status(exc) == status


@pytest.mark.parametrize("convert", [to_binary, to_structured])
def test_parse_event_in_both_modes(convert):
    headers, body = convert(_event())
    event = parse_event(headers, body)
    assert (event["id"], event["type"], event["subject"], event["partitionkey"]) == (
        "e-1",
        CHUNK_EVENT_TYPE,
        "job-1",
        "job-1",
    )
    assert event.data == {"job_id": "job-1", "chunk": 0}


@pytest.mark.parametrize(
    "headers,body,reason",
    [
        ({"content-type": "application/json"}, b'{"job_id": 1}', "ce-specversion"),
        ({"content-type": "application/cloudevents+json"}, b"{not json", "ce-specversion"),
        ({"content-type": "application/cloudevents+json"}, b'{"specversion": "1.0", "type": "t"}', "Missing"),
        ({"ce-specversion": "0.9", "ce-id": "1", "ce-source": "s", "ce-type": "t"}, b"{}", "specversion"),
        (
            {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "s",
                "ce-type": "t",
                "content-type": "application/json",
            },
            b"{truncated",
            "not valid JSON",
        ),
        ({"content-type": "application/cloudevents-batch+json"}, b"[]", "batched"),
    ],
)
def test_parse_event_rejects_malformed_events(headers, body, reason):
    with pytest.raises(InvalidInput) as err:
        parse_event(headers, body)
    assert err.value.status == 400
    assert reason in err.value.message
    assert "not json" not in err.value.message and "truncated" not in err.value.message


def _event() -> CloudEvent:
    return CloudEvent(
        {
            "type": CHUNK_EVENT_TYPE,
            "source": "/kinfer/batch",
            "subject": "job-1",
            "id": "e-1",
            "partitionkey": "job-1",
            "datacontenttype": "application/json",
        },
        {"job_id": "job-1", "chunk": 0},
    )
