"""``kinfer infer MODEL --data JSON | --file PATH``: one real-time inference (POST /v1/infer)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from shared.cli import api, output
from shared.cli.errors import UsageError

FIELDS = ("model", "version", "prediction", "outputs", "latency_ms", "request_id", "trace_id")
MAX_FILE_BYTES = 64 * 1024 * 1024


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="run one real-time inference",
        description='The input is a JSON list (sent as {"data": [...]}) or an object of named tensors '
        "({\"features\": [[...]]}), from --data or from a file (--file, '-' for stdin).",
        epilog="example: kinfer infer iris_classifier --data '[5.1, 3.5, 1.4, 0.2]'",
    )
    parser.add_argument("model", metavar="MODEL", help="registered model name")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help='the input as JSON: [5.1, 3.5, 1.4, 0.2] or {"features": [[...]]}')
    source.add_argument("--file", type=Path, help="a JSON file holding the input ('-': stdin)")
    parser.add_argument(
        "--version", dest="model_version", default=None, help="model version (default: the newest active one)"
    )
    parser.add_argument(
        "--wait",
        type=int,
        default=0,
        metavar="SECONDS",
        help="while the model's backend wakes from zero, wait up to SECONDS for the answer instead of a 503 "
        "(Prefer: wait=SECONDS; the server caps it at WAIT_MAX_S)",
    )
    output.add_output_arg(parser)
    api.command(parser, run)


class InferBody(TypedDict):
    """The POST /v1/infer body the CLI sends."""

    model: str
    input: dict[str, object]
    version: NotRequired[str]


def read_input(args: argparse.Namespace) -> dict[str, object]:
    """The request's ``input`` object from --data or --file; UsageError when it is not JSON."""
    where = "--data"
    if args.file is not None:
        where = "stdin" if str(args.file) == "-" else str(args.file)
        try:
            raw = sys.stdin.read() if str(args.file) == "-" else _read_file(args.file)
        except OSError as exc:
            raise UsageError(f"cannot read {where}: {exc.strerror or exc}") from None
    else:
        raw = args.data
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if isinstance(value, list):
        return {"data": value}
    if isinstance(value, dict) and value:
        return value
    raise UsageError(f"{where} must be a JSON list ([5.1, 3.5, ...]) or an object of named tensors")


def _read_file(path: Path) -> str:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise UsageError(f"{path} is over {MAX_FILE_BYTES // 2**20} MiB; use a batch job (kinfer batch submit)")
    return path.read_text(encoding="utf-8")


def run(client: api.Client, args: argparse.Namespace) -> int:
    body: InferBody = {"model": args.model, "input": read_input(args)}
    if args.model_version:
        body["version"] = args.model_version
    if args.wait < 0:
        raise UsageError("--wait takes a number of seconds, 0 or more")
    prefer = {"Prefer": f"wait={args.wait}"} if args.wait else None
    answer = client.call("POST", "/v1/infer", body, headers=prefer, timeout=api.TIMEOUT_S + args.wait)
    output.emit(args, answer, fields=FIELDS)
    return 0
