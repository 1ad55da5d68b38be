"""The batch dead-letter function: a chunk whose deliveries ran out has its items marked failed."""

from __future__ import annotations

import functions_framework.aio
from cloudevents.http import CloudEvent
from starlette.requests import Request
from starlette.responses import Response

from shared.batch.worker import ChunkAnswer
from shared.web.dispatch import dispatch
from shared.web.request import Call
from shared.web.runtime import event_routes, function_services


def _fail(call: Call, event: CloudEvent) -> tuple[int, ChunkAnswer]:
    return function_services().worker.fail_chunk(event)


ROUTES = event_routes(_fail)


@functions_framework.aio.http
async def fail_dead_chunk(request: Request) -> Response:
    return await dispatch(request, ROUTES, function_services(), "batch-deadletter")
