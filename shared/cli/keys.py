"""``kinfer keys``: API keys through the admin API (``/v1/keys``, admin scope), so it works against
any deployed platform; and ``keys bootstrap``, the one database-direct path, which creates the
first admin key of a new installation (there is no key yet to call the API with).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.cli import api, output
from shared.cli.errors import EXIT_USAGE, ApiError, UsageError

if TYPE_CHECKING:
    from shared.access.keys import KeyStore

FIELDS = (
    "id",
    "name",
    "prefix",
    "status",
    "scopes",
    "rate_limit_per_minute",
    "tokens_per_minute",
    "created_at",
    "last_used_at",
    "revoked_at",
    "expires_at",
)
COLUMNS = [
    output.column("ID", "id"),
    output.column("NAME", "name"),
    ("PREFIX", lambda r: f"{r['prefix']}..."),
    output.column("STATUS", "status"),
    output.column("SCOPES", "scopes"),
    ("LIMIT", lambda r: r["rate_limit_per_minute"] or "default"),
    ("TOKENS/MIN", lambda r: r.get("tokens_per_minute") or "-"),
    output.time_column("CREATED", "created_at"),
    output.time_column("LAST USED", "last_used_at"),
    output.time_column("REVOKED", "revoked_at"),
    output.time_column("EXPIRES", "expires_at"),
]
SHOWN_ONCE = "Store this key now: it is not shown again."
CALLBACK_SHOWN_ONCE = "Store this callback secret now: it is not shown again (its callbacks are signed with it)."


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("keys", help="create, list, limit and revoke API keys (admin API)")
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="create a key and print it (shown only once)")
    _key_args(create)
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", metavar="DURATION", help="the key expires after this: 30d, 12h, 45m, 3600s")
    expiry.add_argument("--expires-at", metavar="TIME", help="the key expires at this ISO 8601 time (UTC if no zone)")
    output.add_output_arg(create)
    api.command(create, _create)
    listing = sub.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument(
        "--status", choices=("active", "expired", "revoked"), help="only active, only expired or only revoked keys"
    )
    listing.add_argument("--limit", type=int, default=None, help="at most this many (1-1000, default 100)")
    listing.add_argument("--offset", type=int, default=None)
    output.add_output_arg(listing)
    api.command(listing, _list)
    show = sub.add_parser("show", help="show one key (never its secret)")
    show.add_argument("key_id", metavar="ID")
    output.add_output_arg(show)
    api.command(show, _show)
    update = sub.add_parser(
        "update",
        help="change a key's limits (requests and tokens per minute)",
        description="Sets a key's requests-per-minute and/or tokens-per-minute limit (`none` clears one: the "
        "platform's RATE_LIMIT_PER_MINUTE for requests, no token limit). Every instance applies it within "
        "AUTH_CACHE_TTL_S; audited as key.update.",
    )
    update.add_argument("key_id", metavar="ID")
    update.add_argument("--rate-limit", type=_limit, metavar="PER_MINUTE|none", help="requests per minute")
    update.add_argument("--tokens-per-minute", type=_limit, metavar="N|none", help="prompt + completion tokens")
    output.add_output_arg(update)
    api.command(update, _update)
    revoke = sub.add_parser("revoke", help="revoke a key by id (it stops working within AUTH_CACHE_TTL_S)")
    revoke.add_argument("key_id", metavar="ID")
    output.add_output_arg(revoke)
    api.command(revoke, _revoke)
    rotate = sub.add_parser(
        "callback-secret",
        help="rotate a key's callback signing secret and print the new one (shown only once)",
        description="Async inference callbacks are signed with the secret of the key that sent the request. "
        "This draws a new one (the old one stops verifying at once) and prints it. ID is `self` (the key you "
        "call with) or its own id: no other key may, an admin key included.",
    )
    rotate.add_argument("key_id", metavar="ID|self")
    output.add_output_arg(rotate)
    api.command(rotate, _rotate_callback_secret)
    boot = sub.add_parser(
        "bootstrap",
        help="create the FIRST admin key directly in the database (DATABASE_URL)",
        description="For a new installation only: writes an admin key straight into the "
        "database named by DATABASE_URL, because no key exists yet to call "
        "the admin API with. Refused once an active admin key exists; then use "
        "`kinfer keys create` with that key.",
    )
    boot.add_argument("--name", required=True, help="who or what the key is for")
    boot.add_argument(
        "--rate-limit",
        type=int,
        default=None,
        metavar="PER_MINUTE",
        help="requests per minute (default: RATE_LIMIT_PER_MINUTE)",
    )
    output.add_output_arg(boot)
    boot.set_defaults(func=_bootstrap)


def _key_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="who or what the key is for")
    parser.add_argument("--scopes", required=True, help="comma-separated: infer,batch,admin")
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=None,
        metavar="PER_MINUTE",
        help="requests per minute (default: the platform's RATE_LIMIT_PER_MINUTE)",
    )
    parser.add_argument(
        "--tokens-per-minute",
        type=int,
        default=None,
        metavar="N",
        help="prompt + completion tokens per minute on the OpenAI-compatible routes (default: no token limit)",
    )


UNSET = "unset"


def _limit(text: str) -> int | str:
    """An argparse ``type``: a positive integer, or ``none`` (clear the limit)."""
    if text.strip().lower() in ("none", "null", "default"):
        return UNSET
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a whole number nor `none`") from None


def _create(client: api.Client, args: argparse.Namespace) -> int:
    body = {
        "name": args.name,
        "scopes": [s.strip() for s in args.scopes.split(",") if s.strip()],
        "rate_limit_per_minute": args.rate_limit,
    }
    if args.tokens_per_minute is not None:
        body["tokens_per_minute"] = args.tokens_per_minute
    if args.expires_in is not None:
        body["expires_in"] = args.expires_in
    if args.expires_at is not None:
        body["expires_at"] = args.expires_at
    try:
        created = client.call("POST", "/v1/keys", body)
    except ApiError as exc:
        if exc.status == 400 and exc.field in ("expires_in", "expires_at", *LIMIT_FIELDS):
            exc.exit_code = EXIT_USAGE  # the API's word on a flag's value: a usage error (exit 2)
        raise
    _print_created(args, created)
    return 0


LIMIT_FIELDS = ("rate_limit_per_minute", "tokens_per_minute")


def _update(client: api.Client, args: argparse.Namespace) -> int:
    body: dict[str, int | None] = {}
    for flag, name in ((args.rate_limit, "rate_limit_per_minute"), (args.tokens_per_minute, "tokens_per_minute")):
        if flag is not None:
            body[name] = None if flag == UNSET else int(flag)
    if not body:
        raise UsageError("nothing to change: give --rate-limit and/or --tokens-per-minute")
    try:
        record = client.call("PATCH", f"/v1/keys/{_path_id(args.key_id)}", body)
    except ApiError as exc:
        if exc.status == 400 and exc.field in LIMIT_FIELDS:
            exc.exit_code = EXIT_USAGE
        raise
    output.emit(args, record, fields=FIELDS)
    return 0


def _print_created(args: argparse.Namespace, created: Mapping[str, object]) -> None:
    if args.output != "table":
        output.emit(args, created)
        return
    fields = (
        "id",
        "name",
        "scopes",
        "rate_limit_per_minute",
        "tokens_per_minute",
        "expires_at",
        "key",
        "callback_secret",
    )
    print(output.describe(created, fields))
    print(SHOWN_ONCE, file=sys.stderr)


def _list(client: api.Client, args: argparse.Namespace) -> int:
    page = client.call("GET", "/v1/keys", query={"status": args.status, "limit": args.limit, "offset": args.offset})
    output.emit(args, page, rows="keys", columns=COLUMNS)
    return 0


def _show(client: api.Client, args: argparse.Namespace) -> int:
    output.emit(args, client.call("GET", f"/v1/keys/{_path_id(args.key_id)}"), fields=FIELDS)
    return 0


def _revoke(client: api.Client, args: argparse.Namespace) -> int:
    record = client.call("DELETE", f"/v1/keys/{_path_id(args.key_id)}")
    if args.output == "table":
        print(f"revoked {record['id']} ({record['name']}) at {output.when(record['revoked_at'])}")
    else:
        output.emit(args, record)
    return 0


def _rotate_callback_secret(client: api.Client, args: argparse.Namespace) -> int:
    rotated = client.call("POST", f"/v1/keys/{_path_id(args.key_id)}/callback-secret")
    if args.output != "table":
        output.emit(args, rotated)
        return 0
    print(output.describe(rotated, ("id", "callback_secret", "rotated_at")))
    print(CALLBACK_SHOWN_ONCE, file=sys.stderr)
    return 0


def _path_id(raw: str) -> str:
    import urllib.parse

    return urllib.parse.quote(raw, safe="")


def _bootstrap(args: argparse.Namespace) -> int:
    from shared.services import Services
    from shared.settings import Settings

    services = Services(Settings.from_env())
    try:
        return _create_first_admin(services.keys, args)
    finally:
        services.close()


def _create_first_admin(keys: KeyStore, args: argparse.Namespace) -> int:
    admins = [k for k in keys.list_keys(status="active") if "admin" in k["scopes"]]
    if admins:
        raise UsageError(
            f"an active admin key exists already ({admins[0]['name']}, {admins[0]['prefix']}...); "
            "create further keys over the API: kinfer keys create --name NAME --scopes ..."
        )
    record, plaintext = keys.create_key(args.name, ["admin"], rate_limit=args.rate_limit)
    shown = {**record, "key": plaintext, "callback_secret": keys.callback_secret_of(record["id"])}
    _print_created(args, shown)
    return 0
