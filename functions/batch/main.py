"""The batch API function: submit, list, status and cancel batch jobs, and upload grants (``shared.batch``)."""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared import registry
from shared.batch import jobs as batch
from shared.web.http import LIVEZ, Call, Route, Router, dispatch
from shared.web.runtime import function_services


def _submit(call: Call) -> tuple[int, dict, dict]:
    job = batch.submit_job(call.services, call.json(), batch.owner_of(call.principal))
    return 202, job, {"Location": f"/v1/batch/{job['id']}"}


def _upload(call: Call) -> tuple[int, dict]:
    body = call.json() if call.body.strip() else None
    return 201, batch.create_upload(call.services, body, batch.owner_of(call.principal))


def _list(call: Call) -> dict:
    return batch.list_jobs(call.services, call.args, batch.owner_of(call.principal))


def _get(call: Call, job_id: str) -> dict:
    return batch.get_job(call.services, job_id, batch.owner_of(call.principal))


def _cancel(call: Call, job_id: str) -> dict:
    return batch.cancel_job(call.services, job_id, batch.owner_of(call.principal))


def _health(call: Call) -> tuple[int, dict]:
    return registry.health(call.services)


ROUTES = Router([
    LIVEZ,
    Route("/health", ("GET",), _health, query=()),
    Route("/v1/batch", ("POST",), _submit, scope="batch", query=()),
    Route("/v1/batch", ("GET",), _list, scope="batch", query=batch.LIST_QUERY),
    Route("/v1/batch/uploads", ("POST",), _upload, scope="batch", query=()),
    Route("/v1/batch/<job_id>", ("GET",), _get, scope="batch", query=()),
    Route("/v1/batch/<job_id>", ("DELETE",), _cancel, scope="batch", query=()),
])


@functions_framework.aio.http
async def manage_batch_jobs(request: Request) -> Response:
    return await dispatch(request, ROUTES, function_services(), "batch")
