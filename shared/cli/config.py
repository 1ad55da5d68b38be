"""``kinfer config``: named contexts (API URL + key) in the config file, like kubectl contexts."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shared.cli import contexts, output
from shared.cli.api import Connection, display_key, resolve
from shared.cli.errors import UsageError
from shared.settings import ClientSettings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "config",
        help="contexts: which API URL and key commands use",
        description="Contexts live in $XDG_CONFIG_HOME/kinfer/config.toml "
        "(default ~/.config/kinfer/config.toml; KINFER_CONFIG overrides). "
        "Flags win over KINFER_URL / KINFER_API_KEY, which win over the "
        "current context.",
    )
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    set_ctx = sub.add_parser("set-context", help="create or update a context (only the fields given change)")
    set_ctx.add_argument("name", metavar="NAME")
    set_ctx.add_argument("--url", help="API base URL, e.g. https://api.kinfer.example.com")
    set_ctx.add_argument("--key", help="API key; '-' reads it from stdin (keeps it out of the shell history)")
    set_ctx.add_argument("--use", action="store_true", help="also make it the current context")
    output.add_output_arg(set_ctx)
    set_ctx.set_defaults(func=_set_context)
    use = sub.add_parser("use-context", help="make NAME the current context")
    use.add_argument("name", metavar="NAME")
    output.add_output_arg(use)
    use.set_defaults(func=_use_context)
    listing = sub.add_parser("get-contexts", help="list the contexts (keys shown by prefix only)")
    output.add_output_arg(listing, formats=(*output.FORMATS, "name"))
    listing.set_defaults(func=_get_contexts)
    current = sub.add_parser("current-context", help="show what a command would use now, and why")
    output.add_output_arg(current)
    current.set_defaults(func=_current_context)
    delete = sub.add_parser("delete-context", help="delete a context")
    delete.add_argument("name", metavar="NAME")
    output.add_output_arg(delete)
    delete.set_defaults(func=_delete_context)


def _config() -> contexts.Config:
    return contexts.load(contexts.config_path(ClientSettings.from_env()))


def _set_context(args: argparse.Namespace) -> int:
    config = _config()
    name = contexts.check_name(args.name)
    old = config.contexts.get(name)
    if old is None and not args.url:
        raise UsageError(f"context {name!r} is new: give its --url")
    key = sys.stdin.readline().strip() if args.key == "-" else args.key
    url = contexts.check_url(args.url) if args.url else old.url if old else ""
    config.contexts[name] = contexts.Context(name, url, contexts.check_key(key) if key else old.key if old else "")
    if args.use or not config.current:
        config.current = name
    contexts.save(config)
    what = "created" if old is None else "updated"
    line = f"context {name} {what} in {config.path}" + (" (current)" if config.current == name else "")
    return _done(args, line, {"context": name, "url": url, "current": config.current == name, "path": str(config.path)})


def _done(args: argparse.Namespace, line: str, data: dict[str, object]) -> int:
    """What a change did: ``line`` for ``-o table``, ``data`` as JSON or YAML otherwise."""
    if args.output == "table":
        print(line)
    else:
        output.emit(args, data)
    return 0


def _use_context(args: argparse.Namespace) -> int:
    config = _config()
    config.get(args.name)
    config.current = args.name
    contexts.save(config)
    return _done(args, f"switched to context {args.name}", {"current-context": args.name})


def _get_contexts(args: argparse.Namespace) -> int:
    config = _config()
    names = sorted(config.contexts)
    if args.output == "name":
        print("\n".join(names))
        return 0
    rows = [
        {
            "name": n,
            "current": n == config.current,
            "url": config.contexts[n].url,
            "key": display_key(config.contexts[n].key),
        }
        for n in names
    ]
    data = {"current-context": config.current, "contexts": rows, "path": str(config.path)}
    output.emit(
        args,
        data,
        rows="contexts",
        columns=[
            ("CURRENT", lambda r: "*" if r["current"] else " "),
            output.column("NAME", "name"),
            output.column("URL", "url"),
            output.column("KEY", "key"),
        ],
    )
    return 0


def _current_context(args: argparse.Namespace) -> int:
    conn: Connection = resolve(argparse.Namespace(), ClientSettings.from_env())
    data = {"context": conn.context, "url": conn.url, "key": conn.key_prefix, "key_from": conn.key_source}
    output.emit(args, data)
    return 0


def _delete_context(args: argparse.Namespace) -> int:
    config = _config()
    config.get(args.name)
    del config.contexts[args.name]
    if config.current == args.name:
        config.current = ""
    contexts.save(config)
    return _done(args, f"deleted context {args.name}", {"context": args.name, "deleted": True})
