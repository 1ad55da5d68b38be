"""The batch dead-letter function: an event whose deliveries ran out.

A chunk has its items marked failed (so the job still ends); an async inference request is marked failed
(its callback still goes out); a callback is marked failed.
"""

from __future__ import annotations

from collections.abc import Mapping

import functions_framework.aio
from cloudevents.http import CloudEvent
from starlette.requests import Request
from starlette.responses import Response

from shared.batch.events import INFER_CALLBACK_EVENT_TYPE, INFER_REQUEST_EVENT_TYPE
from shared.batch.worker import dead_reason
from shared.web.dispatch import dispatch
from shared.web.request import Call
from shared.web.runtime import event_routes, function_services

_ASYNC = {INFER_REQUEST_EVENT_TYPE: "request", INFER_CALLBACK_EVENT_TYPE: "callback"}


def _fail(call: Call, event: CloudEvent) -> tuple[int, Mapping[str, object]]:
    services = function_services()
    what = _ASYNC.get(event["type"])
    if what is not None:
        # no delivery detail: a caller who can reach this function must not write text into a tenant's answer
        return services.requests.fail_dead(event, dead_reason(event, what))
    return services.worker.fail_chunk(event)


ROUTES = event_routes(_fail)


@functions_framework.aio.http
async def fail_dead_chunk(request: Request) -> Response:
    return await dispatch(request, ROUTES, function_services(), "batch-deadletter")
