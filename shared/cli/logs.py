"""``kinfer logs [PART] [-f]``: the local stack's logs (``.kinfer/logs/<part>.log``), as ``tail`` would.

PART is a part of ``kinfer status`` (a function such as ``gateway``, ``infer``, ``batch_worker``,
or ``triton``, ``agent``, ``s3``, ...): the parts the running stack recorded, else the log files
that a stopped one left behind. Without PART every log is shown, each line prefixed with its
part. ``-f`` follows new lines (a log that is truncated or replaced is read again from its start)
until Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO

from shared.cli import output
from shared.cli.errors import UsageError

POLL_S = 0.25


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="print or follow the local stack's logs (.kinfer/logs)",
        description="Prints the last lines of a part's log (every part's without PART), then with -f "
        "follows them. The parts are those of `kinfer status`.",
    )
    parser.add_argument("part", nargs="?", metavar="PART", help="a part of `kinfer status` (default: every part)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    parser.add_argument(
        "-n",
        "--lines",
        type=output.bounded(0, 100_000),
        default=20,
        metavar="N",
        help="how many of the last lines to print first (default 20)",
    )
    parser.set_defaults(func=run)


def parts() -> dict[str, Path]:
    """Part name -> its log file: what the running stack recorded, else the files under .kinfer/logs."""
    from shared.localstack.stack import load_state, state_dir

    found = {name: Path(comp["log"]) for name, comp in load_state().get("components", {}).items() if comp.get("log")}
    logs = state_dir() / "logs"
    if logs.is_dir():
        for path in sorted(logs.glob("*.log")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def run(args: argparse.Namespace) -> int:
    known = parts()
    if not known:
        raise UsageError("the local stack has no logs (it has not run here)", hint="start it with `kinfer up`")
    if args.part is not None and args.part not in known:
        raise UsageError(
            f"no part named {args.part!r}; the parts are: {', '.join(known)}", hint="`kinfer status` shows them"
        )
    chosen = {args.part: known[args.part]} if args.part else known
    prefix = args.part is None
    handles: dict[str, BinaryIO | None] = {}
    for name, path in chosen.items():
        for line in last_lines(path, args.lines):
            _print(name, line, prefix)
        handles[name] = _open_at_end(path) if args.follow else None
    sys.stdout.flush()
    if args.follow:
        follow(chosen, handles, prefix)
    return 0


def last_lines(path: Path, count: int) -> list[bytes]:
    """The last ``count`` lines of ``path`` (none when it does not exist yet)."""
    if count == 0:
        return []
    try:
        with path.open("rb") as handle:
            return list(deque(handle, maxlen=count))
    except OSError:
        return []


def follow(paths: dict[str, Path], handles: dict[str, BinaryIO | None], prefix: bool) -> None:
    """Print lines as they are appended; reopen a log that was truncated or replaced (a restarted part)."""
    pending = dict.fromkeys(paths, b"")
    while True:
        for name, path in paths.items():
            handle = handles[name]
            if handle is None or _replaced(path, handle):
                if handle is not None:
                    handle.close()
                handles[name] = handle = _open(path)
                pending[name] = b""
            if handle is None:
                continue
            data = pending[name] + handle.read()
            *lines, pending[name] = data.split(b"\n")
            for line in lines:
                _print(name, line + b"\n", prefix)
        sys.stdout.flush()
        time.sleep(POLL_S)


def _open(path: Path) -> BinaryIO | None:
    try:
        return path.open("rb")
    except OSError:
        return None


def _open_at_end(path: Path) -> BinaryIO | None:
    handle = _open(path)
    if handle is not None:
        handle.seek(0, 2)
    return handle


def _replaced(path: Path, handle: BinaryIO) -> bool:
    """The file at ``path`` is no longer the one open, or it was truncated below where we read."""
    import os

    try:
        now = path.stat()
    except OSError:
        return False
    was = os.fstat(handle.fileno())
    return (now.st_ino, now.st_dev) != (was.st_ino, was.st_dev) or now.st_size < handle.tell()


def _print(name: str, line: bytes, prefix: bool) -> None:
    text = line.decode("utf-8", "replace")
    sys.stdout.write(f"{name} | {text}" if prefix else text)
    if not text.endswith("\n"):
        sys.stdout.write("\n")
