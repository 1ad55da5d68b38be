"""The batch worker function: one ``dev.kinfer.batch.chunk.v1`` CloudEvent = one chunk to infer.

200 done or skipped (duplicate, cancelled job); 503 Triton/DB/S3 unavailable (redelivered);
400 malformed event and 422 unknown job (not retried).
"""

from __future__ import annotations

import functions_framework.aio
from cloudevents.http import CloudEvent
from starlette.requests import Request
from starlette.responses import Response

from shared.batch.worker import ChunkAnswer
from shared.web.dispatch import dispatch
from shared.web.request import Call
from shared.web.runtime import event_routes, function_services


def _process(call: Call, event: CloudEvent) -> tuple[int, ChunkAnswer]:
    return function_services().worker.process_chunk(event)


ROUTES = event_routes(_process)


@functions_framework.aio.http
async def process_batch_chunk(request: Request) -> Response:
    return await dispatch(request, ROUTES, function_services(), "batch-worker")
