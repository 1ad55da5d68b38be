"""``kinfer db``: create the database if needed and apply the migrations."""

from __future__ import annotations

import argparse

from shared.settings import Settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("db", help="database migrations")
    sub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = sub.add_parser("upgrade", help="create the database if missing and migrate it to the newest schema")
    up.add_argument("--revision", default="head")
    up.set_defaults(func=upgrade)


def upgrade(args: argparse.Namespace) -> int:
    from shared.clients import db

    settings = Settings.from_env()
    created = db.ensure_database(settings)
    db.upgrade(settings, args.revision)
    print(("created and " if created else "") + f"migrated the database to {args.revision}")
    return 0
