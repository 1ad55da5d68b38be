"""``kinfer models list|show|versions|aliases|delete-alias``: what the registry holds for a model name.

``show NAME VERSION`` takes a version or an alias: an alias is read through the aliases endpoint and
each version it sends traffic to is shown (every version of a split, with its share). Each prints
``-o table`` for people (REASON shortened at a word boundary) and the API's own answer with
``-o json|yaml``. ``versions`` and ``aliases`` read every version and alias of a name (``/aliases``
first, whose 404 for an unknown name says what the API knows, then the list endpoint paged), so a
table can say which aliases point at which version, and how traffic is split.
"""

from __future__ import annotations

import argparse
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from shared.cli import output
from shared.cli.api import Client
from shared.cli.errors import ApiError

Action = Callable[[Callable[[Any, argparse.Namespace], int]], Callable[[argparse.Namespace], int]]
PAGE = 500
MAX_VERSIONS = 10_000
REASON_WIDTH = 60

VERSION_COLUMNS = [
    output.column("VERSION", "version"),
    output.column("STATE", "state"),
    output.column("STATUS", "status"),
    ("TRITON", lambda m: f"{m.get('triton_model')}:{m.get('triton_version') or '-'}"),
    output.time_column("CREATED", "created_at"),
    output.column("ALIASES", "aliases"),
    output.column("REASON", "state_reason", width=REASON_WIDTH),
]
ALIAS_COLUMNS = [
    output.column("ALIAS", "alias"),
    ("TARGET", lambda a: weights(a["versions"])),  # type: ignore[arg-type]
    ("STICKY", lambda a: "per X-Route-Key" if len(a["versions"]) > 1 else "-"),  # type: ignore[arg-type]
    ("PREVIOUS", lambda a: weights(a["previous"]) if a.get("previous") else "-"),  # type: ignore[arg-type]
    output.time_column("UPDATED", "updated_at"),
]
LIST_COLUMNS = [
    output.column("NAME", "name"),
    output.column("VERSION", "version"),
    output.column("STATUS", "status"),
    output.column("STATE", "state"),
    ("TRITON", lambda m: f"{m.get('triton_model')}:{m.get('triton_version') or '-'}"),
    output.time_column("CREATED", "created_at"),
]
SHOW_FIELDS = (
    "id",
    "name",
    "version",
    "status",
    "state",
    "state_reason",
    "framework",
    "format",
    "triton_model",
    "triton_version",
    "description",
    "tags",
    "created_at",
    "updated_at",
)


def register(sub: Any, action: Action) -> list[argparse.ArgumentParser]:
    """Add the read commands (and ``delete-alias``) to ``kinfer models``; the parsers, for the connection flags."""
    lst = sub.add_parser("list", help="list model versions, newest first")
    lst.add_argument("--name", help="only this model")
    lst.add_argument("--limit", type=output.bounded(1, 500), default=50, help="at most this many (1-500, default 50)")
    show = sub.add_parser(
        "show", help="a model's versions and aliases, or one version (or each version of an alias) with its replicas"
    )
    show.add_argument("name")
    show.add_argument("version", nargs="?", help="a version, or an alias (production, canary...)")
    versions = sub.add_parser(
        "versions", help="a model's versions: state, status, created, the aliases that point at each"
    )
    versions.add_argument("name")
    aliases = sub.add_parser("aliases", help="a model's aliases: target version or split, sticky, updated")
    aliases.add_argument("name")
    for parser, func in ((lst, _list), (show, _show), (versions, _versions), (aliases, _aliases)):
        output.add_output_arg(parser)
        parser.set_defaults(func=action(func))
    delete = sub.add_parser(
        "delete-alias", help="delete an alias (callers naming it get 404; a version it pointed at can then go)"
    )
    delete.add_argument("name")
    delete.add_argument("alias")
    output.add_output_arg(delete)
    delete.set_defaults(func=action(_delete_alias))
    return [lst, show, versions, aliases, delete]


def alias_path(name: str, alias: str = "") -> str:
    path = f"/v1/models/by-name/{urllib.parse.quote(name, safe='')}/aliases"
    return f"{path}/{urllib.parse.quote(alias, safe='')}" if alias else path


def weights(versions: dict[str, int]) -> str:
    """``2``, or ``1=90%, 2=10%`` for a split."""
    if len(versions) == 1:
        return next(iter(versions))
    return ", ".join(f"{v}={w}%" for v, w in versions.items())


def all_versions(api: Client, name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, newest first (the list endpoint, paged); a 404 (naming the list call's
    request id) when there is none."""
    found: list[dict[str, Any]] = []
    while len(found) < MAX_VERSIONS:
        page = api.call("GET", "/v1/models", query={"name": name, "limit": PAGE, "offset": len(found)})
        found += page["models"]
        if not page["models"] or len(found) >= page["total"]:
            break
    if not found:
        raise ApiError(
            f"model {name!r} not found",
            404,
            "not_found",
            request_id=api.last_request_id,
            hint="`kinfer models list` shows the registered models",
        )
    return found


def _aliases_of(api: Client, name: str) -> list[dict[str, Any]]:
    """The aliases of ``name``; read first, as the API's 404 for an unknown name says what it knows (did you
    mean ...?)."""
    found: list[dict[str, Any]] = api.call("GET", alias_path(name))["aliases"]
    return found


def _with_aliases(versions: list[dict[str, Any]], aliases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each version with the aliases that send it traffic (``canary (10%)`` for a share of a split)."""

    def pointing(version: str) -> list[str]:
        return [
            a["alias"] if len(a["versions"]) == 1 else f"{a['alias']} ({a['versions'][version]}%)"
            for a in aliases
            if version in a["versions"]
        ]

    return [dict(m, aliases=pointing(m["version"])) for m in versions]


def _list(api: Client, args: argparse.Namespace) -> int:
    page = api.call("GET", "/v1/models", query={"limit": args.limit, "name": args.name})
    output.emit(args, page, rows="models", columns=LIST_COLUMNS)
    if args.output == "table" and page["total"] > len(page["models"]):
        print(f"({len(page['models'])} of {page['total']}; --limit shows more)")
    return 0


def _versions(api: Client, args: argparse.Namespace) -> int:
    aliases = _aliases_of(api, args.name)
    versions = _with_aliases(all_versions(api, args.name), aliases)
    output.emit(args, {"name": args.name, "versions": versions}, rows="versions", columns=VERSION_COLUMNS)
    return 0


def _aliases(api: Client, args: argparse.Namespace) -> int:
    answer = api.call("GET", alias_path(args.name))
    if not answer["aliases"]:
        all_versions(api, args.name)  # a name that does not exist is a 404, not an empty list
    if args.output == "table" and not answer["aliases"]:
        print(f"model {args.name} has no aliases (`kinfer models promote {args.name} VERSION` adds production)")
        return 0
    output.emit(args, answer, rows="aliases", columns=ALIAS_COLUMNS)
    return 0


def _delete_alias(api: Client, args: argparse.Namespace) -> int:
    api.call("DELETE", alias_path(args.name, args.alias))
    if args.output == "table":
        print(f"deleted alias {args.alias} of {args.name}")
    else:
        output.emit(args, {"name": args.name, "alias": args.alias, "deleted": True})
    return 0


def version_with_replicas(api: Client, name: str, version: str) -> dict[str, Any]:
    """One version of ``name`` and its load state on every backend (``backends``)."""
    path = f"/v1/models/by-name/{urllib.parse.quote(name, safe='')}/{urllib.parse.quote(version, safe='')}"
    model = api.call("GET", path)
    status = api.call("GET", f"/v1/models/{model['id']}/status")
    return dict(model, backends=status["backends"])


def _print_version(shown: dict[str, Any]) -> None:
    print(output.describe(shown, SHOW_FIELDS))
    print(output.table(_replicas(shown["backends"]), REPLICA_COLUMNS))


def _show(api: Client, args: argparse.Namespace) -> int:
    from shared.registry.rules import VERSION

    if args.version and not VERSION.fullmatch(args.version):
        return _show_alias(api, args)
    if args.version:
        shown = version_with_replicas(api, args.name, args.version)
        if args.output != "table":
            output.emit(args, shown)
            return 0
        _print_version(shown)
        return 0
    aliases = _aliases_of(api, args.name)
    versions = all_versions(api, args.name)
    if args.output != "table":
        output.emit(args, {"name": args.name, "versions": versions, "aliases": aliases})
        return 0
    print(output.table(_with_aliases(versions, aliases), VERSION_COLUMNS))
    for alias in aliases:
        previous = f" (before: {weights(alias['previous'])})" if alias["previous"] else ""
        print(f"alias {alias['alias']} -> {weights(alias['versions'])}{previous}")
    return 0


def _show_alias(api: Client, args: argparse.Namespace) -> int:
    """``show NAME ALIAS``: the alias, then every version it sends traffic to (each of a split, with its share)."""
    alias = api.call("GET", alias_path(args.name, args.version))
    shown = [dict(version_with_replicas(api, args.name, v), weight=w) for v, w in alias["versions"].items()]
    if args.output != "table":
        output.emit(args, {"name": args.name, "alias": alias, "versions": shown})
        return 0
    print(f"alias {args.version} of {args.name} -> {weights(alias['versions'])}")
    for model in shown:
        print(f"\n-- version {model['version']} ({model['weight']}% of the traffic)")
        _print_version(model)
    return 0


REPLICA_COLUMNS = [
    output.column("BACKEND", "backend"),
    output.column("LIVE", "live"),
    output.column("LOADED", "loaded"),
    output.column("REPLICA", "replica"),
    output.column("STATE", "state"),
    output.column("REASON", "reason", width=REASON_WIDTH),
]


def _replicas(backends: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per replica of every backend (with its live and loaded counts), or one for a backend with none."""
    rows: list[dict[str, Any]] = []
    for backend, load in backends.items():
        counts = {
            "backend": backend,
            "live": load.get("live"),
            "loaded": load.get("loaded"),
            "reason": load.get("note"),
        }
        rows += [
            dict(
                counts,
                replica=r.get("replica"),
                state="loaded" if r.get("loaded") else "failed" if r.get("failed") else "not loaded",
                reason=r.get("failed"),
            )
            for r in load.get("replicas") or []
        ] or [counts]
    return rows
