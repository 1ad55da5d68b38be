"""``kinfer models shadow|shadow-status`` and ``kinfer models rollout start|status|pause|resume|abort``: shadow
versions and automatic rollouts of an alias over the HTTP API (``shared.lifecycle.shadow``,
``shared.lifecycle.rollout``).

``shadow NAME ALIAS VERSION PERCENT`` mirrors PERCENT % of the alias's requests to VERSION (0 stops it),
keeping the alias's other shadow versions; ``shadow-status`` prints what mirroring showed per pair.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from shared.cli import output
from shared.cli.api import Client
from shared.cli.errors import UsageError
from shared.cli.modelviews import alias_path

Action = Callable[[Callable[[Any, argparse.Namespace], int]], Any]

PAIR_COLUMNS = (
    output.column("PRIMARY", "primary"),
    output.column("SHADOW", "shadow"),
    output.column("MIRRORED", "mirrored"),
    output.column("AGREEMENT", "agreement"),
    output.column("MAX_DIFF", "max_abs_difference"),
    output.column("ERRORS", "errors"),
    output.column("DROPPED", "dropped"),
    output.column("SHADOW_MS", "shadow_latency_ms"),
    output.column("PRIMARY_MS", "primary_latency_ms"),
)
ROLLOUT_FIELDS = ("name", "alias", "baseline", "candidate", "state", "percent", "step", "reason", "figures")


def register(sub: Any, action: Action) -> list[argparse.ArgumentParser]:
    """Add ``shadow``, ``shadow-status`` and ``rollout ...`` to ``kinfer models``; the parsers that call the API."""
    shadow = sub.add_parser("shadow", help="mirror a share of an alias's requests to a version (never answered)")
    shadow.add_argument("name")
    shadow.add_argument("alias")
    shadow.add_argument("version")
    shadow.add_argument("percent", type=output.bounded(0, 100), help="0-100 (0 stops mirroring to VERSION)")
    shadow.set_defaults(func=action(_shadow))
    status = sub.add_parser("shadow-status", help="an alias's shadow versions: agreement, differences, latency")
    status.add_argument("name")
    status.add_argument("alias")
    status.set_defaults(func=action(_shadow_status))
    rollout = sub.add_parser("rollout", help="move an alias to a candidate step by step behind error/latency gates")
    verbs = rollout.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    start = verbs.add_parser("start", help="start: split the alias at the first step; the gates do the rest")
    start.add_argument("name")
    start.add_argument("candidate", help="the version to roll out")
    start.add_argument("--steps", default="10,50,100", help="candidate percent per step (default 10,50,100)")
    start.add_argument("--min-requests", type=int, default=100, help="candidate requests per step (default 100)")
    start.add_argument("--min-step-s", type=float, default=60, help="seconds per step at least (default 60)")
    start.add_argument("--max-error-rate", type=float, default=0.01, help="candidate error rate (default 0.01)")
    start.add_argument("--max-p99-ratio", type=float, default=1.5, help="candidate p99 / baseline p99 (default 1.5)")
    parsers = [shadow, status, start]
    start.set_defaults(func=action(_start))
    for verb, text in (
        ("status", "where the rollout is, and the figures of its last decision"),
        ("pause", "stop deciding (the split stays)"),
        ("resume", "decide again, from a fresh step window"),
        ("abort", "stop and send every request back to the baseline"),
    ):
        p = verbs.add_parser(verb, help=text)
        p.add_argument("name")
        parsers.append(p)
        p.set_defaults(func=action(_status if verb == "status" else _verb))
    for p in parsers:
        if p not in (shadow, status):
            p.add_argument("--alias", default="production", help="the alias (default production)")
        output.add_output_arg(p)
    return parsers


def _shadow(api: Client, args: argparse.Namespace) -> int:
    current = dict(api.call("GET", alias_path(args.name, args.alias) + "/shadow")["shadow"])
    current.pop(args.version, None)
    if args.percent:
        current[args.version] = args.percent
    answer = api.call("PUT", alias_path(args.name, args.alias) + "/shadow", {"shadow": current})
    if args.output == "table":
        shown = ", ".join(f"{v}={p}%" for v, p in answer["shadow"].items()) or "none"
        print(f"alias {args.alias} of {args.name}: shadow {shown}")
    else:
        output.emit(args, answer)
    return 0


def _shadow_status(api: Client, args: argparse.Namespace) -> int:
    answer = api.call("GET", alias_path(args.name, args.alias) + "/shadow")
    output.emit(args, answer, rows="pairs", columns=PAIR_COLUMNS)
    return 0


def parse_steps(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--steps {text!r} is not a list of percentages", hint="e.g. --steps 10,50,100") from None


def _start(api: Client, args: argparse.Namespace) -> int:
    body = {
        "candidate": args.candidate,
        "steps": parse_steps(args.steps),
        "min_requests": args.min_requests,
        "min_step_s": args.min_step_s,
        "max_error_rate": args.max_error_rate,
        "max_p99_ratio": args.max_p99_ratio,
    }
    output.emit(args, api.call("POST", alias_path(args.name, args.alias) + "/rollout", body), fields=ROLLOUT_FIELDS)
    return 0


def _status(api: Client, args: argparse.Namespace) -> int:
    output.emit(args, api.call("GET", alias_path(args.name, args.alias) + "/rollout"), fields=ROLLOUT_FIELDS)
    return 0


def _verb(api: Client, args: argparse.Namespace) -> int:
    path = alias_path(args.name, args.alias) + f"/rollout/{args.rollout_command}"
    output.emit(args, api.call("POST", path), fields=ROLLOUT_FIELDS)
    return 0
