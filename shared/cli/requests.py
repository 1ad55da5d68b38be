"""``kinfer requests get ID``: an async inference request (GET /v1/requests/{id}), queued by
``kinfer infer --async``."""

from __future__ import annotations

import argparse
from typing import Any

from shared.cli import api, infer, output
from shared.cli.errors import UsageError

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
    get.add_argument("request_id", metavar="ID", help="the id `kinfer infer --async` printed")
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
    if args.wait != 0:
        limit = None if args.wait is None else float(args.wait)
        return infer.print_outcome(args, infer.wait_for_request(client, args.request_id, limit))
    status = client.call("GET", f"/v1/requests/{args.request_id}")
    output.emit(args, status, fields=FIELDS)
    return 0
