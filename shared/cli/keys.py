"""``kinfer keys create|list|revoke``: manage API keys in the database named by DATABASE_URL."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC
from typing import TYPE_CHECKING, Any

from shared.errors import KinferError

if TYPE_CHECKING:
    from shared.services import Services


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("keys", help="create, list and revoke API keys")
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--scopes", required=True, help="comma-separated: infer,batch,admin")
    create.add_argument("--rate-limit", type=int, default=None, metavar="PER_MINUTE",
                        help="requests per minute (default: RATE_LIMIT_PER_MINUTE)")
    create.set_defaults(func=_with_services(_create))
    listing = sub.add_parser("list", help="list keys (never their secrets)")
    listing.set_defaults(func=_with_services(_list))
    revoke = sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", metavar="ID")
    revoke.set_defaults(func=_with_services(_revoke))


def _with_services(action: Callable[[Any, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``action`` with Services built from the environment; KinferErrors become exit code 1."""

    def run(args: argparse.Namespace) -> int:
        from shared.services import Services
        from shared.settings import Settings

        services = Services(Settings.from_env())
        try:
            return action(services, args)
        except KinferError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        finally:
            services.close()

    return run


def _create(services: Services, args: argparse.Namespace) -> int:
    from shared.access.keys import create_key

    record, plaintext = create_key(services, args.name, args.scopes, rate_limit=args.rate_limit)
    print(f"id:     {record['id']}\nname:   {record['name']}\nscopes: {','.join(record['scopes'])}")
    print(f"key:    {plaintext}\nStore this key now: it is not shown again.")
    return 0


def _list(services: Services, args: argparse.Namespace) -> int:
    from shared.access.keys import list_keys

    header = ("ID", "NAME", "PREFIX", "SCOPES", "LIMIT", "CREATED", "REVOKED")
    rows = [(r["id"], r["name"], r["prefix"] + "...", ",".join(r["scopes"]),
             str(r["rate_limit_per_minute"] or "default"), _when(r["created_at"]), _when(r["revoked_at"]))
            for r in list_keys(services)]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _when(value: Any) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


def _revoke(services: Services, args: argparse.Namespace) -> int:
    from shared.access.keys import revoke_key

    record = revoke_key(services, args.key_id)
    print(f"revoked {record['id']} ({record['name']}) at {_when(record['revoked_at'])}")
    return 0
