"""``kinfer audit``: the audit log through ``GET /v1/audit`` (admin scope), newest first.

``--since``/``--until`` take an ISO 8601 time or an age (``90m``, ``12h``, ``7d``: that long ago). The table
shows one line per entry and what changed; ``-o json|yaml`` prints the entries whole (before and after).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.cli import api, output

AGE = re.compile(r"([1-9][0-9]{0,5})([smhd])")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
QUIET = frozenset({"updated_at", "created_at", "last_used_at", "previous"})  # follow from the change itself
COLUMNS = [
    output.time_column("TIME", "at"),
    output.column("ACTOR", "actor_name", 24),
    output.column("ACTION", "action"),
    output.column("TARGET", "target"),
    ("CHANGE", lambda entry: output.shorten(change(entry.get("before"), entry.get("after")), 70)),
]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="who changed what and when: the audit log (admin API)",
        description="Every admin action (push, delete, alias moves, keys, batch cancels, rollout decisions, "
        "capture settings), newest first. Needs an admin key.",
    )
    parser.add_argument("--model", help="entries about this model (its versions and aliases)")
    parser.add_argument("--action", help="alias.move, or alias for every alias.* action")
    parser.add_argument("--target", help="one target: alias:NAME/ALIAS, version:NAME/VERSION, key:ID, job:ID")
    parser.add_argument("--actor", metavar="KEY_ID", help="entries of this API key")
    parser.add_argument("--since", type=moment, metavar="TIME|AGE", help="at or after: ISO 8601 time or 90m, 12h, 7d")
    parser.add_argument("--until", type=moment, metavar="TIME|AGE", help="before: ISO 8601 time or an age")
    parser.add_argument("--limit", type=output.bounded(1, 500), default=50, help="at most this many (default 50)")
    parser.add_argument("--cursor", help="continue after a previous page (its next_cursor)")
    output.add_output_arg(parser)
    api.command(parser, _list)


def moment(text: str) -> str:
    """An argparse ``type``: an ISO 8601 time (UTC when it has no zone) or an age, as an ISO time."""
    age = AGE.fullmatch(text.strip())
    if age:
        delta = timedelta(seconds=int(age.group(1)) * UNIT_S[age.group(2)])
        return (datetime.now(UTC) - delta).isoformat(timespec="seconds")
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an ISO 8601 time nor an age such as 12h") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


def change(before: object, after: object) -> str:
    """What an entry changed, in a few words: ``created``, ``deleted`` or ``field: old -> new, ...``."""
    if before is None and after is None:
        return "-"
    if before is None:
        return "created"
    if after is None:
        return "deleted"
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return f"{output.cell(before)} -> {output.cell(after)}"
    fields = [k for k in dict.fromkeys([*before, *after]) if k not in QUIET and before.get(k) != after.get(k)]
    return ", ".join(f"{k}: {output.cell(before.get(k))} -> {output.cell(after.get(k))}" for k in fields) or "-"


def _list(client: api.Client, args: argparse.Namespace) -> int:
    query = {
        "model": args.model,
        "action": args.action,
        "target": args.target,
        "actor": args.actor,
        "since": args.since,
        "until": args.until,
        "limit": args.limit,
        "cursor": args.cursor,
    }
    page = client.call("GET", "/v1/audit", query=query)
    output.emit(args, page, rows="entries", columns=COLUMNS)
    if args.output == "table" and page.get("next_cursor"):
        print(f"more: kinfer audit ... --cursor {page['next_cursor']}")
    return 0
