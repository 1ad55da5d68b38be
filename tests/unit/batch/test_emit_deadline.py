"""A stalled event sink (its Kafka, or the local relay's Redis, paused) answers a batch submit 503 within
EVENT_EMIT_TIMEOUT_S, retries included: it took 3 x 10 s read timeouts (30.7 s) before (issue 20)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from shared.batch.jobs import BatchJobs
from shared.errors import Unavailable


@pytest.fixture
def stalled_sink() -> Iterator[str]:
    """A listening socket that never accepts: connects succeed (the backlog), no answer ever comes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield f"http://127.0.0.1:{server.getsockname()[1]}/kinfer/batch-chunks"
    server.close()


def test_a_stalled_sink_fails_the_emit_within_the_deadline(stalled_sink: str) -> None:
    settings = SimpleNamespace(
        k_sink=stalled_sink, event_source="/kinfer/batch", s3_input_bucket="in", event_emit_timeout_s=1.0
    )
    jobs: Any = BatchJobs.__new__(BatchJobs)
    jobs.settings = settings
    job = {"id": uuid.uuid4(), "chunk_size": 10, "total": 10, "model_name": "m", "model_version": "1"}
    job["model_id"] = uuid.uuid4()
    started = time.monotonic()
    with pytest.raises(Unavailable):
        jobs.emit_chunk(job, 0)
    assert time.monotonic() - started < 2.0
