"""``kinfer capture``: payload capture settings through the API (``/v1/models/by-name/{name}/capture``,
``/v1/capture``). ``set`` and ``delete`` need an admin key; ``get`` and ``list`` any key.

A target is ``MODEL`` (every request of the model) or ``MODEL@ALIAS`` (only requests that name that
alias, or version, in their ``version``).
"""

from __future__ import annotations

import argparse
import urllib.parse
from typing import Any

from shared.cli import api, output
from shared.cli.errors import UsageError

FIELDS = ("model", "alias", "sample_percent", "redact", "updated_by", "updated_at")
COLUMNS = [
    output.column("MODEL", "model"),
    ("ALIAS", lambda r: r["alias"] or "*"),
    ("PERCENT", lambda r: f"{r['sample_percent']:g}"),
    ("REDACT", lambda r: ",".join(r["redact"]) or "-"),
    output.column("UPDATED BY", "updated_by"),
    output.time_column("UPDATED", "updated_at"),
]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("capture", help="payload capture settings: sampling rate and redacted fields")
    sub = parser.add_subparsers(dest="capture_command", metavar="ACTION", required=True)
    setter = sub.add_parser(
        "set",
        help="capture a share of a model's requests (admin)",
        description="Captured requests and answers are written as JSON lines to the capture bucket "
        "(capture/<model>/<version>/<date>/<hour>/). MODEL@ALIAS captures only requests naming that alias.",
    )
    setter.add_argument("target", metavar="MODEL[@ALIAS]")
    setter.add_argument("--percent", type=float, required=True, help="the share of requests captured, 0-100")
    setter.add_argument(
        "--redact",
        default=None,
        metavar="FIELDS",
        help="comma-separated input fields to redact (omitted: an existing setting keeps its list; '' clears it)",
    )
    output.add_output_arg(setter)
    api.command(setter, _set)
    getter = sub.add_parser("get", help="show a model's capture setting")
    getter.add_argument("target", metavar="MODEL[@ALIAS]")
    output.add_output_arg(getter)
    api.command(getter, _get)
    listing = sub.add_parser("list", help="list every capture setting")
    listing.add_argument("--model", default=None, help="only this model's settings")
    output.add_output_arg(listing)
    api.command(listing, _list)
    delete = sub.add_parser("delete", help="stop capturing a model's (or an alias's) requests (admin)")
    delete.add_argument("target", metavar="MODEL[@ALIAS]")
    output.add_output_arg(delete)
    api.command(delete, _delete)


def split_target(raw: str) -> tuple[str, str | None]:
    """``MODEL`` or ``MODEL@ALIAS`` -> (model, alias or None)."""
    name, _, alias = raw.partition("@")
    if not name or (raw.endswith("@") and not alias):
        raise UsageError(f"{raw!r} is not MODEL or MODEL@ALIAS")
    return name, alias or None


def _path(name: str) -> str:
    return f"/v1/models/by-name/{urllib.parse.quote(name, safe='')}/capture"


def _set(client: api.Client, args: argparse.Namespace) -> int:
    name, alias = split_target(args.target)
    body: dict[str, object] = {"sample_percent": args.percent}
    if args.redact is not None:
        body["redact"] = [f.strip() for f in args.redact.split(",") if f.strip()]
    if alias is not None:
        body["alias"] = alias
    output.emit(args, client.call("PUT", _path(name), body), fields=FIELDS)
    return 0


def _get(client: api.Client, args: argparse.Namespace) -> int:
    name, alias = split_target(args.target)
    output.emit(args, client.call("GET", _path(name), query={"alias": alias}), fields=FIELDS)
    return 0


def _list(client: api.Client, args: argparse.Namespace) -> int:
    page = client.call("GET", "/v1/capture", query={"model": args.model})
    output.emit(args, page, rows="settings", columns=COLUMNS)
    return 0


def _delete(client: api.Client, args: argparse.Namespace) -> int:
    name, alias = split_target(args.target)
    client.call("DELETE", _path(name), query={"alias": alias})
    if args.output == "table":
        print(f"capture stopped for {args.target}")
    else:
        output.emit(args, {"model": name, "alias": alias, "deleted": True})
    return 0
