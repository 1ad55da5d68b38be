"""``kinfer infer MODEL --data JSON | --file PATH``: one real-time inference (POST /v1/infer)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from shared.cli import api, output
from shared.cli.errors import ApiError, UsageError

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
        "--version",
        dest="model_version",
        default=None,
        help="model version or alias (default: alias production, else the newest ready version)",
    )
    parser.add_argument(
        "--wait",
        type=int,
        nargs="?",
        const=None,
        default=0,
        metavar="SECONDS",
        help="while the model's backend wakes from zero, wait up to SECONDS for the answer instead of a 503 "
        "(Prefer: wait=SECONDS; the server caps it at WAIT_MAX_S); with --async: poll until the request is "
        "done (at most SECONDS when given) and print its result like a synchronous call",
    )
    parser.add_argument(
        "--async",
        dest="run_async",
        action="store_true",
        help="queue the request (Prefer: respond-async) and print its id and Location; "
        "`kinfer requests get ID` reads it later",
    )
    parser.add_argument(
        "--callback-url",
        default=None,
        metavar="URL",
        help="with --async: POST the outcome, signed, to URL (Kinfer-Callback-URL)",
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
    if args.run_async:
        return run_async(client, args, body)
    if args.callback_url:
        raise UsageError("--callback-url needs --async")
    if args.wait is None:
        raise UsageError("--wait needs a number of seconds here (a bare --wait polls only with --async)")
    if args.wait < 0:
        raise UsageError("--wait takes a number of seconds, 0 or more")
    prefer = {"Prefer": f"wait={args.wait}"} if args.wait else None
    answer = client.call("POST", "/v1/infer", body, headers=prefer, timeout=api.TIMEOUT_S + args.wait)
    output.emit(args, answer, fields=FIELDS)
    return 0


ACCEPTED_FIELDS = ("id", "status", "location", "model", "version", "created_at", "expires_at", "callback_url")
POLL_S = (0.2, 2.0)  # the first poll interval, and the longest


def run_async(client: api.Client, args: argparse.Namespace, body: InferBody) -> int:
    """``--async``: queue the request; print its id and Location, or with ``--wait`` poll it and print the
    result as a synchronous call would (exit 1 when it failed, with its error)."""
    if args.wait is not None and args.wait < 0:
        raise UsageError("--wait takes a number of seconds, 0 or more (or none with --async: no limit)")
    headers = {"Prefer": "respond-async"}
    if args.callback_url:
        headers["Kinfer-Callback-URL"] = args.callback_url
    accepted = client.call("POST", "/v1/infer", body, headers=headers)
    if args.wait == 0:
        output.emit(args, accepted, fields=ACCEPTED_FIELDS)
        return 0
    limit = None if args.wait is None else float(args.wait)
    done = wait_for_request(client, str(accepted["id"]), limit)
    return print_outcome(args, done)


def wait_for_request(client: api.Client, request_id: str, limit_s: float | None) -> dict[str, object]:
    """Poll GET /v1/requests/{id} until it succeeded or failed (ApiError past ``limit_s``)."""
    deadline = None if limit_s is None else time.monotonic() + limit_s
    interval = POLL_S[0]
    while True:
        status: dict[str, object] = client.call("GET", f"/v1/requests/{request_id}")
        if status.get("status") in ("succeeded", "failed"):
            return status
        if deadline is not None and time.monotonic() >= deadline:
            raise ApiError(
                f"request {request_id} is still {status.get('status')}",
                code="timeout",
                hint=f"`kinfer requests get {request_id}` reads it later",
            )
        time.sleep(interval)
        interval = min(interval * 1.5, POLL_S[1])


def print_outcome(args: argparse.Namespace, status: dict[str, object]) -> int:
    """A finished request: its result printed like a synchronous answer, or its error as one line (exit 1)."""
    if status.get("status") == "succeeded" and isinstance(status.get("result"), dict):
        output.emit(args, status["result"], fields=FIELDS)
        return 0
    error = status.get("error") if isinstance(status.get("error"), dict) else {}
    assert isinstance(error, dict)
    raise ApiError(
        f"{error.get('error', 'the request failed')} (async request {status.get('id')})",
        status=int(str(status.get("http_status") or 0)) or None,
        code=str(error.get("code", "") or "failed"),
        field=str(error.get("field") or ""),
        request_id=str(error.get("request_id") or ""),
    )
