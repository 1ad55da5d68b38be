"""``kinfer requests get ID``: an async inference request (GET /v1/requests/{id}), queued by
``kinfer infer --async``. ID may be a unique prefix of 4+ hex digits of one of the caller's own requests
(``GET /v1/requests?prefix=``), as batch job ids may."""

from __future__ import annotations

import argparse
from typing import Any

from shared.cli import api, infer, output
from shared.cli.batch import FULL_ID, ID_PREFIX
from shared.cli.errors import ApiError, UsageError

FIELDS = (
    "id",
    "status",
    "model",
    "version",
    "protocol",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
    "expires_at",
    "http_status",
    "result",
    "error",
    "callback",
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("requests", help="async inference requests (kinfer infer --async)")
    commands = parser.add_subparsers(dest="requests_command", metavar="COMMAND", required=True)
    get = commands.add_parser(
        "get",
        help="status, then the result of an async request",
        description="Shows the request's status (queued, running, succeeded, failed), its timestamps and its "
        "result or error; --wait polls until it is done and prints the result like `kinfer infer`.",
    )
    get.add_argument(
        "request_id", metavar="ID", help="the id `kinfer infer --async` printed, or a unique prefix (4+ hex digits)"
    )
    get.add_argument(
        "--wait",
        type=int,
        nargs="?",
        const=None,
        default=0,
        metavar="SECONDS",
        help="poll until the request is done (at most SECONDS when given); print its result",
    )
    output.add_output_arg(get)
    api.command(get, _get)


def _get(client: api.Client, args: argparse.Namespace) -> int:
    if args.wait is not None and args.wait < 0:
        raise UsageError("--wait takes a number of seconds, 0 or more (or none: no limit)")
    request_id = resolve_request_id(client, args.request_id)
    if args.wait != 0:
        limit = None if args.wait is None else float(args.wait)
        return infer.print_outcome(args, infer.wait_for_request(client, request_id, limit))
    status = client.call("GET", f"/v1/requests/{request_id}")
    output.emit(args, status, fields=FIELDS)
    return 0


def resolve_request_id(client: api.Client, given: str) -> str:
    """The full id of the caller's request ``given`` (an id, or a unique prefix of 4+ hex digits)."""
    text = given.strip().lower()
    if FULL_ID.fullmatch(text):
        return text
    if not ID_PREFIX.fullmatch(text):
        raise UsageError(
            f"{given[:64]!r} is not a request id",
            hint="give the id `kinfer infer --async` printed, or a prefix of at least 4 hex digits",
        )
    answer = client.call("GET", "/v1/requests", query={"prefix": text})
    found = answer["requests"]
    if not found:
        raise ApiError(
            f"none of your async requests has an id starting with {text!r} (or it is past its retention)",
            404,
            "not_found",
            request_id=client.last_request_id,
        )
    if len(found) > 1 or answer["more"]:
        shown = "; ".join(f"{r['id']} ({r['status']}, {r['model']}, {output.when(r['created_at'])})" for r in found)
        more = " and more" if answer["more"] else ""
        raise UsageError(
            f"{text!r} is the prefix of {len(found)} requests: {shown}{more}",
            hint="give more of the id",
            code="ambiguous",
        )
    return str(found[0]["id"])
