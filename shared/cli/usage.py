"""``kinfer usage``: token usage of the OpenAI-compatible routes through ``GET /v1/usage``, per key and model
(``--by hour``: per hour too). A key sees its own usage; an admin key any key's (``--key-id ID``) or every
key's (``--key`` is the API key to call with, as for every API command).

``--since``/``--until`` take an ISO 8601 time or an age (``90m``, ``12h``, ``7d``: that long ago); the default
is the last 24 hours. Usage is counted per hour, so the hours that overlap the range are summed.
"""

from __future__ import annotations

import argparse
from typing import Any

from shared.cli import api, output
from shared.cli.audit import moment
from shared.cli.errors import EXIT_USAGE, ApiError

COLUMNS = [
    output.column("KEY", "key_id"),
    output.column("MODEL", "model"),
    output.column("PROMPT", "prompt_tokens"),
    output.column("COMPLETION", "completion_tokens"),
    output.column("TOTAL", "total_tokens"),
    output.column("REQUESTS", "requests"),
]
HOUR_COLUMNS = [output.time_column("HOUR", "hour"), *COLUMNS]
USAGE_FIELDS = ("key_id", "model", "since", "until", "by", "limit")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "usage",
        help="token usage per key and model (prompt, completion)",
        description="Prompt and completion tokens of the OpenAI-compatible routes, per API key and model "
        "(--by hour: per hour too), over the last 24 hours unless --since/--until say otherwise. A key sees its "
        "own usage; an admin key any key's (--key-id ID) or, without --key-id, every key's.",
    )
    parser.add_argument("--key-id", metavar="ID|self", help="this key's usage (admin keys: any key; default: your own)")
    parser.add_argument("--model", help="this model only")
    parser.add_argument("--since", type=moment, metavar="TIME|AGE", help="from: ISO 8601 time or 90m, 12h, 7d ago")
    parser.add_argument("--until", type=moment, metavar="TIME|AGE", help="before: ISO 8601 time or an age")
    parser.add_argument("--by", choices=("model", "hour"), default="model", help="rows per key and model, or per hour")
    parser.add_argument("--limit", type=output.bounded(1, 10_000), default=None, help="at most this many rows")
    output.add_output_arg(parser)
    api.command(parser, _usage)


def _usage(client: api.Client, args: argparse.Namespace) -> int:
    query = {
        "key_id": args.key_id,
        "model": args.model,
        "since": args.since,
        "until": args.until,
        "by": args.by,
        "limit": args.limit,
    }
    try:
        report = client.call("GET", "/v1/usage", query=query)
    except ApiError as exc:
        if exc.status == 400 and exc.field in USAGE_FIELDS:
            exc.exit_code = EXIT_USAGE  # the API's word on a flag's value (--since after --until): exit 2
        raise
    if args.output != "table":
        output.emit(args, report)
        return 0
    print(output.table(report["usage"], HOUR_COLUMNS if report.get("by") == "hour" else COLUMNS))
    totals = report["totals"]
    print(
        f"total {totals['total_tokens']} tokens ({totals['prompt_tokens']} prompt, {totals['completion_tokens']} "
        f"completion) in {totals['requests']} requests, {output.when(report['since'])} to "
        f"{output.when(report['until'])}"
    )
    if report.get("truncated"):
        print(f"more rows than --limit {report['limit']}: the total counts them all")
    return 0
