"""The batch API function: submit, list, status and cancel batch jobs, and upload grants (``shared.batch``)."""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared.batch import jobs as batch
from shared.domain import BatchJob, owner_of
from shared.errors import Forbidden
from shared.registry.reads import Health
from shared.web import schemas as s
from shared.web.audit import actor_of
from shared.web.dispatch import dispatch
from shared.web.request import Call, require_json
from shared.web.route import LIVEZ, Route
from shared.web.routing import Router
from shared.web.runtime import function_services


def _submit(call: Call) -> tuple[int, batch.JobSummary, dict[str, str]]:
    require_json(call.header("content-type"))
    body, services = batch.parse_body(call.body), function_services()  # call.json() in C-speed passes
    if isinstance(body, dict) and "from_capture" in body:  # a replay of captured traffic: every caller's inputs
        if services.settings.auth_required and "admin" not in getattr(call.principal, "scopes", ()):
            raise Forbidden("from_capture replays every caller's captured inputs: it needs an admin key")
        job = services.replays.submit(body, owner_of(call.principal))
    else:
        job = services.jobs.submit_job(body, owner_of(call.principal))
    return 202, job, {"Location": f"/v1/batch/{job['id']}"}


def _upload(call: Call) -> tuple[int, batch.UploadGrant]:
    body = call.json() if call.body.strip() else None
    return 201, function_services().jobs.create_upload(body, owner_of(call.principal))


def _list(call: Call) -> batch.JobPage:
    return function_services().jobs.list_jobs(call.args, owner_of(call.principal))


def _get(call: Call, job_id: str) -> BatchJob:
    services = function_services()
    return services.replays.annotate(services.jobs.get_job(job_id, owner_of(call.principal)))


def _cancel(call: Call, job_id: str) -> batch.Cancelled:
    return function_services().jobs.cancel_job(job_id, owner_of(call.principal), actor_of(call))


def _health(call: Call) -> tuple[int, Health]:
    return function_services().registry.health()


ROUTES = Router(
    [
        LIVEZ,
        Route(
            "/health", ("GET",), _health, query=(), summary="Health: PostgreSQL and Redis", responses=s.HEALTH_ANSWERS
        ),
        Route(
            "/v1/batch",
            ("POST",),
            _submit,
            query=(),
            scope="batch",
            summary="Submit a batch job",
            body=s.BATCH_SUBMIT,
            responses={202: ("accepted", s.BATCH_ACCEPTED)},
        ),
        Route(
            "/v1/batch",
            ("GET",),
            _list,
            scope="batch",
            summary="Your batch jobs, newest first",
            query=s.BATCH_FILTERS,
            responses={200: ("a page of jobs", s.BATCH_LIST)},
        ),
        Route(
            "/v1/batch/uploads",
            ("POST",),
            _upload,
            query=(),
            scope="batch",
            summary="An upload URL under your prefix",
            body=s.UPLOAD_REQUEST,
            responses={201: ("where to PUT the JSONL file", s.UPLOAD_GRANT)},
        ),
        Route(
            "/v1/batch/<job_id>",
            ("GET",),
            _get,
            query=(),
            scope="batch",
            summary="A batch job's status",
            responses={200: ("progress, counters, errors, result_url", s.BATCH_JOB)},
        ),
        Route(
            "/v1/batch/<job_id>",
            ("DELETE",),
            _cancel,
            query=(),
            scope="batch",
            summary="Cancel a batch job",
            responses={200: ("cancelled", s.BATCH_CANCELLED)},
        ),
    ],
    title="Kinfer batch",
)


@functions_framework.aio.http
async def manage_batch_jobs(request: Request) -> Response:
    return await dispatch(request, ROUTES, function_services(), "batch")
