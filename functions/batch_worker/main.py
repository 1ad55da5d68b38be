"""The batch worker function: the events of the chunk topic, by type.

``dev.kinfer.batch.chunk.v1``: one chunk to infer (``shared.batch.worker``, in the thread pool).
``dev.kinfer.infer.request.v1``: one async inference request, run on the event loop through the async
DataPlane (``shared.batch.requests``); ``dev.kinfer.infer.callback.v1``: the signed POST of its outcome.

200 done or skipped (duplicate, cancelled job, a request already finished, an unknown job or request: acked
and logged, no work created; a chunk is what its job row says, never what the event says); 503 Triton/DB/S3
unavailable or a callback receiver that failed (redelivered); 400 malformed event, 422 a chunk input that
disagrees with its job (not retried).
"""

from __future__ import annotations

from collections.abc import Mapping

import functions_framework.aio
from cloudevents.http import CloudEvent
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shared.batch.events import INFER_CALLBACK_EVENT_TYPE, INFER_REQUEST_EVENT_TYPE
from shared.web.dispatch import dispatch
from shared.web.request import Call
from shared.web.runtime import event_routes, function_services


async def _process(call: Call, event: CloudEvent) -> tuple[int, Mapping[str, object]]:
    services = function_services()
    kind = event["type"]
    if kind == INFER_REQUEST_EVENT_TYPE:
        return await services.requests.execute(event)
    if kind == INFER_CALLBACK_EVENT_TYPE:
        return await run_in_threadpool(services.requests.deliver_callback, event)
    return await run_in_threadpool(services.worker.process_chunk, event)


ROUTES = event_routes(_process)


@functions_framework.aio.http
async def process_batch_chunk(request: Request) -> Response:
    return await dispatch(request, ROUTES, function_services(), "batch-worker")
