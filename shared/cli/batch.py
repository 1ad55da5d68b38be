"""``kinfer batch submit|status|cancel|results``: batch jobs through the HTTP API (stdlib urllib only).

``submit FILE.jsonl`` sends the file's lines as inline ``inputs`` (one input per
line). A file too big for one request body (the API's MAX_BODY_BYTES, 10 MiB by
default) is uploaded first, under the caller's own prefix of the input bucket
(``POST /v1/batch/uploads`` gives a presigned PUT URL), and submitted as ``input_url``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://localhost:8080"
DEFAULT_KEY = "demo-token"  # the local stack's dev key
INLINE_LIMIT = 9 * 1024 * 1024
FINISHED = ("completed", "failed", "cancelled")


class ApiError(RuntimeError):
    """The API answered an error (its message is shown to the user)."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("batch", help="submit and follow batch inference jobs")
    sub = parser.add_subparsers(dest="batch_command", metavar="ACTION", required=True)
    submit = sub.add_parser("submit", help="submit a JSONL file (one input per line) as a batch job")
    submit.add_argument("file", nargs="?", type=Path, help="JSONL file of inputs like {\"data\": [...]}")
    submit.add_argument("--input-url", help="s3://bucket/uploads/<your key id>/....jsonl already uploaded "
                        "(instead of FILE)")
    submit.add_argument("--upload", action="store_true",
                        help="upload FILE and submit it as input_url even when it is small enough to send inline")
    submit.add_argument("--model", required=True)
    submit.add_argument("--version", default=None)
    submit.add_argument("--wait", action="store_true", help="show progress until the job finishes")
    submit.set_defaults(func=_action(_submit))
    for name, helptext, func in (("status", "show a job's status", _status),
                                 ("cancel", "cancel a pending or processing job", _cancel)):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("job_id", metavar="ID")
        p.set_defaults(func=_action(func))
    results = sub.add_parser("results", help="download a finished job's results (JSONL)")
    results.add_argument("job_id", metavar="ID")
    results.add_argument("-o", "--output", type=Path, default=None, help="write here instead of stdout")
    results.set_defaults(func=_action(_results))
    for p in (submit, *[sub.choices[n] for n in ("status", "cancel", "results")]):
        p.add_argument("--url", default=DEFAULT_URL, help=f"API base URL (default {DEFAULT_URL})")
        p.add_argument("--key", default=DEFAULT_KEY, help="API key (default: the local dev key)")


def _action(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(Client(args.url, args.key), args)
        except (ApiError, OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


class Client:
    """A tiny JSON client of /v1/batch."""

    def __init__(self, base_url: str, key: str | None) -> None:
        self.base_url, self.key = base_url.rstrip("/"), key

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.key:
            request.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiError(f"{method} {path} -> {exc.code}: {_error_text(exc)}") from None


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("error", exc.reason))
    except (ValueError, AttributeError):
        return str(exc.reason)


def read_inputs(path: Path) -> list[Any]:
    """The inputs of a JSONL file; ValueError naming the first bad line."""
    inputs = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    inputs.append(json.loads(line))
                except ValueError:
                    raise ValueError(f"{path}:{number} is not valid JSON") from None
    return inputs


def _submit(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"model": args.model}
    if args.version:
        body["version"] = args.version
    if args.input_url:
        body["input_url"] = args.input_url
    elif args.file:
        if args.upload or args.file.stat().st_size > INLINE_LIMIT:
            body["input_url"] = upload_file(client, args.file)
        else:
            body["inputs"] = read_inputs(args.file)
    else:
        raise ValueError("give FILE.jsonl or --input-url")
    started = time.monotonic()
    job = client.call("POST", "/v1/batch", body)
    print(f"job {job['job_id']}: {job['status']}, {job['total']} item(s)", file=sys.stderr)
    if not args.wait:
        print(job["job_id"])
        return 0
    final = wait_for(client, job["job_id"], job["total"])
    print(summary(final, time.monotonic() - started))
    return 0 if final["status"] == "completed" else 1


def upload_file(client: Client, path: Path) -> str:
    """Upload ``path`` to the caller's upload prefix with a progress bar; its ``input_url``."""
    import re

    from tqdm import tqdm

    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.name).lstrip("._-")[:128] or "inputs.jsonl"
    grant = client.call("POST", "/v1/batch/uploads", {"filename": name})
    size = path.stat().st_size
    with path.open("rb") as handle, tqdm(total=size, unit="B", unit_scale=True, desc="upload",
                                         file=sys.stderr) as bar:
        reader = _Progress(handle, bar)
        request = urllib.request.Request(grant["upload_url"], data=reader, method=grant["method"],  # type: ignore[arg-type]
                                         headers={**grant["headers"], "Content-Length": str(size)})
        try:
            with urllib.request.urlopen(request, timeout=600):
                pass
        except urllib.error.HTTPError as exc:
            raise ApiError(f"upload of {path} failed: {exc.code} {exc.reason}") from None
    return str(grant["input_url"])


class _Progress:
    """A file reader that advances a progress bar (urllib streams an object with ``read``)."""

    def __init__(self, handle: Any, bar: Any) -> None:
        self.handle, self.bar = handle, bar

    def read(self, size: int = -1) -> bytes:
        block = self.handle.read(size if size > 0 else 1 << 20)
        self.bar.update(len(block))
        return block


def wait_for(client: Client, job_id: str, total: int, interval: float = 0.5) -> dict[str, Any]:
    """Poll the job with a progress bar until it finishes; its last status."""
    from tqdm import tqdm

    with tqdm(total=total, unit="item", desc=job_id[:8], file=sys.stderr) as bar:
        while True:
            status = client.call("GET", f"/v1/batch/{job_id}")
            bar.update(int(status["completed"]) - bar.n)
            bar.set_postfix(failed=status["failed"], status=status["status"])
            if status["status"] in FINISHED:
                return status
            time.sleep(interval)


def summary(status: dict[str, Any], elapsed_s: float) -> str:
    rate = status["completed"] / elapsed_s if elapsed_s > 0 else 0.0
    lines = [f"job {status['job_id']}: {status['status']}",
             f"  succeeded {status['succeeded']}, failed {status['failed']} of {status['total']}",
             f"  time {elapsed_s:.1f}s, {rate:,.0f} items/s",
             f"  results {status.get('result_url') or '(none)'}"]
    lines += [f"  error: {e.get('error')}" for e in status.get("errors", [])[:3]]
    return "\n".join(lines)


def _status(client: Client, args: argparse.Namespace) -> int:
    print(json.dumps(client.call("GET", f"/v1/batch/{args.job_id}"), indent=2))
    return 0


def _cancel(client: Client, args: argparse.Namespace) -> int:
    print(json.dumps(client.call("DELETE", f"/v1/batch/{args.job_id}")))
    return 0


def _results(client: Client, args: argparse.Namespace) -> int:
    status = client.call("GET", f"/v1/batch/{args.job_id}")
    if not status.get("result_url"):
        raise ApiError(f"job {args.job_id} is {status['status']}; it has no results yet")
    with urllib.request.urlopen(status["result_url"], timeout=300) as response:
        out = args.output.open("wb") if args.output else sys.stdout.buffer
        try:
            while block := response.read(1 << 20):
                out.write(block)
        finally:
            if args.output:
                out.close()
    return 0
