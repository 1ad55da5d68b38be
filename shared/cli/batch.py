"""``kinfer batch submit|status|wait|list|cancel|results``: batch jobs through the HTTP API (stdlib urllib).

``submit FILE.jsonl`` sends the file's lines as inline ``inputs`` (one input per
line). A file too big for one request body (the API's MAX_BODY_BYTES, 10 MiB by
default), or one with a line that is not JSON, is uploaded first, under the
caller's own prefix of the input bucket (``POST /v1/batch/uploads`` gives a
presigned PUT URL), and submitted as ``input_url``: a bad line then fails as one
item, exactly as it would through ``input_url``. Failures are reported with the
line numbers of the file. The model (and version or alias) is checked before anything is read
or uploaded.

A job id may be given by a unique prefix of at least 4 hex digits (``kinfer batch status 3f2a``):
the CLI looks it up among the caller's own jobs (``GET /v1/batch``, newest first); an ambiguous
prefix is a usage error that lists the candidates.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

from shared.cli import api, output
from shared.cli.api import Client
from shared.cli.errors import EXIT_FAILED, EXIT_ITEMS_FAILED, ApiError, UsageError
from shared.cli.inputs import InputFile, scan
from shared.domain import BatchJob, JobStatus

__all__ = ["ApiError", "Client", "InputFile", "register", "scan", "upload_file"]

INLINE_LIMIT = 9 * 1024 * 1024
FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
SHOWN_FAILURES = 10


class SubmitBody(TypedDict, total=False):
    """The POST /v1/batch body the CLI sends: ``model``, then ``inputs`` or ``input_url``."""

    model: str
    version: str
    inputs: list[Any]
    input_url: str


STATUS_FIELDS = (
    "id",
    "status",
    "model",
    "version",
    "progress",
    "total",
    "completed",
    "succeeded",
    "failed",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "input_url",
    "result_url",
    "comparison",
)
JOB_COLUMNS = [
    output.column("ID", "id"),
    output.column("STATUS", "status"),
    output.column("MODEL", "model"),
    output.column("VERSION", "version"),
    output.column("ITEMS", "total"),
    output.column("SUCCEEDED", "succeeded"),
    output.column("FAILED", "failed"),
    ("PROGRESS", lambda j: f"{j['progress']:.0%}"),
    output.time_column("CREATED", "created_at"),
]
RESULT_FORMATS = ("jsonl", *output.FORMATS)
ID_HELP = "the job id, or a unique prefix of it (at least 4 hex digits)"
FULL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ID_PREFIX = re.compile(r"[0-9a-f]{4}[0-9a-f-]{0,31}")
PREFIX_PAGE, PREFIX_PAGES = 500, 20  # a prefix is looked up among the newest 10,000 jobs


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("batch", help="submit and follow batch inference jobs")
    sub = parser.add_subparsers(dest="batch_command", metavar="ACTION", required=True)
    submit = sub.add_parser(
        "submit",
        help="submit a JSONL file (one input per line) as a batch job",
        epilog="exit codes: 0 done (or submitted), 1 error or job failed/cancelled, "
        "2 usage (a missing file, an unknown option), 3 items failed (--fail-on-errors)",
    )
    submit.add_argument("file", nargs="?", type=Path, help='JSONL file of inputs like {"data": [...]}')
    submit.add_argument(
        "--input-url", help="s3://<input bucket>/uploads/<your key id>/....jsonl already uploaded (instead of FILE)"
    )
    submit.add_argument(
        "--upload",
        action="store_true",
        help="upload FILE and submit it as input_url even when it is small enough to send inline",
    )
    what = submit.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", default=None, help="the model (or --from-capture)")
    what.add_argument(
        "--from-capture",
        metavar="MODEL[/VERSION]",
        default=None,
        help="replay the captured requests of MODEL (or of one captured VERSION) between --since and --until on "
        "--version, and compare the answers (admin key; see `kinfer capture`)",
    )
    submit.add_argument("--since", metavar="TIME", default=None, help="with --from-capture: from this ISO 8601 time")
    submit.add_argument("--until", metavar="TIME", default=None, help="with --from-capture: to this ISO 8601 time")
    submit.add_argument(
        "--version",
        default=None,
        help="model version or alias (default: alias production, else the newest ready version)",
    )
    submit.add_argument("--wait", action="store_true", help="show progress until the job finishes, then a summary")
    submit.add_argument(
        "--fail-on-errors", action="store_true", help="wait, and exit 3 when any item failed (for scripts and CI)"
    )
    output.add_output_arg(submit)
    api.command(submit, _submit)
    status = sub.add_parser("status", help="show a job's status")
    status.add_argument("job_id", metavar="ID", help=ID_HELP)
    output.add_output_arg(status)
    api.command(status, _status)
    wait = sub.add_parser(
        "wait",
        help="follow a job until it finishes, then show a summary",
        epilog="exit codes: 0 done, 1 job failed or cancelled, 2 usage (an ambiguous id prefix), "
        "3 items failed (--fail-on-errors)",
    )
    wait.add_argument("job_id", metavar="ID", help=ID_HELP)
    wait.add_argument("--fail-on-errors", action="store_true", help="exit 3 when any item failed")
    output.add_output_arg(wait)
    api.command(wait, _wait)
    listing = sub.add_parser("list", help="list your jobs, newest first")
    listing.add_argument("--status", choices=tuple(s.value for s in JobStatus))
    listing.add_argument(
        "--limit", type=output.bounded(1, 500), default=None, help="at most this many (1-500, default 50)"
    )
    listing.add_argument("--offset", type=output.bounded(0, 10_000_000), default=None, help="skip this many")
    output.add_output_arg(listing)
    api.command(listing, _list)
    cancel = sub.add_parser("cancel", help="cancel a pending or processing job")
    cancel.add_argument("job_id", metavar="ID", help=ID_HELP)
    output.add_output_arg(cancel)
    api.command(cancel, _cancel)
    results = sub.add_parser("results", help="a finished job's results, one JSON line per input")
    results.add_argument("job_id", metavar="ID", help=ID_HELP)
    results.add_argument(
        "-o",
        "--output",
        default="jsonl",
        metavar="FORMAT",
        help=f"output format: {', '.join(RESULT_FORMATS)} (default jsonl)",
    )
    results.add_argument("--out", type=Path, default=None, metavar="FILE", help="write here instead of stdout")
    results.add_argument("--failed", action="store_true", help="only the items that failed")
    api.command(results, _results)


# -- submit ------------------------------------------------------------------------------
def _submit(client: Client, args: argparse.Namespace) -> int:
    if args.from_capture is not None:
        return _submit_replay(client, args)
    if args.since is not None or args.until is not None:
        raise UsageError("--since and --until go with --from-capture")
    body: SubmitBody = {"model": args.model}
    if args.version:
        body["version"] = args.version
    source = None
    if args.input_url and args.file:
        raise UsageError("give FILE.jsonl or --input-url, not both")
    if args.input_url:
        body["input_url"] = args.input_url
    elif args.file:
        if not args.file.is_file():
            raise UsageError(f"{args.file} {'is not a file' if args.file.exists() else 'does not exist'}")
        check_model(client, args.model, args.version)  # before the file is read or uploaded
        source = _read_source(args.file, args.upload)
        if source.items is not None:
            body["inputs"] = source.items
        else:
            body["input_url"] = upload_file(client, args.file)
    else:
        raise UsageError("give FILE.jsonl or --input-url")
    started = time.monotonic()
    job = client.call("POST", "/v1/batch", body)
    print(f"job {job['job_id']}: {job['status']}, {job['total']} item(s)", file=sys.stderr)
    if not (args.wait or args.fail_on_errors):
        if args.output == "table":
            print(job["job_id"])  # alone on stdout: JOB=$(kinfer batch submit ...)
        else:
            output.emit(args, job)
        return 0
    return _follow(client, args, job["job_id"], job["total"], started, source)


def _submit_replay(client: Client, args: argparse.Namespace) -> int:
    """``--from-capture MODEL[/VERSION] --since T --until T [--version CANDIDATE]``: a replay job."""
    if args.file or args.input_url or args.upload:
        raise UsageError("--from-capture replays captured inputs: give no FILE, --input-url or --upload")
    if not args.since or not args.until:
        raise UsageError("--from-capture needs --since and --until (ISO 8601 times)")
    model, _, captured = args.from_capture.partition("/")
    if not model:
        raise UsageError(f"--from-capture {args.from_capture!r}: give MODEL[/VERSION]")
    window: dict[str, str] = {"model": model, "since": args.since, "until": args.until}
    if captured:
        window["version"] = captured
    body: dict[str, object] = {"from_capture": window}
    if args.version:
        body["version"] = args.version
    started = time.monotonic()
    job = client.call("POST", "/v1/batch", body)
    print(f"replay job {job['job_id']}: {job['status']}, {job['total']} captured request(s)", file=sys.stderr)
    if not (args.wait or args.fail_on_errors):
        if args.output == "table":
            print(job["job_id"])
        else:
            output.emit(args, job)
        return 0
    return _follow(client, args, job["job_id"], job["total"], started, None)


def check_model(client: Client, model: str, version: str | None) -> None:
    """ApiError (the API's 404: its message, code and request id) unless ``model`` exists and has ``version``
    (a version or an alias; none: any)."""
    from shared.cli.modelviews import alias_path, all_versions
    from shared.registry.rules import VERSION

    hint = f"`kinfer models versions {model}` and `kinfer models aliases {model}` show what it has"
    try:
        if not client.call("GET", alias_path(model))["aliases"]:  # an unknown name: the API's 404 (did you mean)
            all_versions(client, model)
        if version is not None and VERSION.fullmatch(version):
            name = urllib.parse.quote(model, safe="")
            client.call("GET", f"/v1/models/by-name/{name}/{urllib.parse.quote(version, safe='')}")
        elif version is not None:
            client.call("GET", alias_path(model, version))
    except ApiError as exc:
        if exc.status != 404:
            raise
        known = exc.code not in ("not_found", "model_not_found")
        exc.hint = "nothing was uploaded; " + (hint if known else "`kinfer models list` shows the registered models")
        raise


def resolve_job_id(client: Client, given: str) -> str:
    """The full id of the caller's job ``given`` (an id, or a unique prefix of 4+ hex digits)."""
    text = given.strip().lower()
    if FULL_ID.fullmatch(text):
        return text
    if not ID_PREFIX.fullmatch(text):
        raise UsageError(
            f"{given[:64]!r} is not a job id",
            hint="give the id or a prefix of at least 4 hex digits (`kinfer batch list`)",
        )
    found: list[BatchJob] = []
    for page in range(PREFIX_PAGES):
        answer = client.call("GET", "/v1/batch", query={"limit": PREFIX_PAGE, "offset": page * PREFIX_PAGE})
        found += [j for j in answer["jobs"] if str(j["job_id"]).startswith(text)]
        if len(answer["jobs"]) < PREFIX_PAGE:
            break
    if not found:
        raise ApiError(
            f"none of your batch jobs has an id starting with {text!r}", 404, "not_found", hint="`kinfer batch list`"
        )
    if len(found) > 1:
        shown = "; ".join(f"{j['job_id']} ({j['status']}, {output.when(j.get('created_at'))})" for j in found[:10])
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        raise UsageError(
            f"{text!r} is the prefix of {len(found)} jobs: {shown}{more}", hint="give more of the id", code="ambiguous"
        )
    return str(found[0]["job_id"])


def _wait(client: Client, args: argparse.Namespace) -> int:
    job = client.call("GET", f"/v1/batch/{resolve_job_id(client, args.job_id)}")
    ended = job if job["status"] in FINISHED else None
    return _follow(client, args, job["job_id"], job["total"], time.monotonic(), None, ended)


def _follow(
    client: Client,
    args: argparse.Namespace,
    job_id: str,
    total: int,
    started: float,
    source: InputFile | None,
    ended: BatchJob | None = None,
) -> int:
    """Wait for the job (``ended``: it had already finished), print its summary (or the final status as
    JSON/YAML); the exit code it deserves."""
    final = ended or wait_for(client, job_id, total)
    if args.output == "table":
        elapsed = job_seconds(final)
        print(summary(final, time.monotonic() - started if elapsed is None else elapsed, source, ended is not None))
    else:
        output.emit(args, final)
    if final["status"] != JobStatus.COMPLETED:
        return EXIT_FAILED
    return EXIT_ITEMS_FAILED if args.fail_on_errors and final["failed"] else 0


def _read_source(path: Path, upload: bool) -> InputFile:
    try:
        size = path.stat().st_size
        source = scan(path, parse=not upload and size <= INLINE_LIMIT)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if source.bad_line is not None:
        print(
            f"kinfer: {path}:{source.bad_line} is not valid JSON; uploading the file so that the line fails "
            "as one item (as through --input-url) while the others run",
            file=sys.stderr,
        )
    return source


def upload_file(client: Client, path: Path) -> str:
    """Upload ``path`` to the caller's upload prefix with a progress bar; its ``input_url``."""
    from tqdm import tqdm

    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.name).lstrip("._-")[:128] or "inputs.jsonl"
    size = path.stat().st_size
    grant = client.call("POST", "/v1/batch/uploads", {"filename": name, "size": size})
    with path.open("rb") as handle, tqdm(total=size, unit="B", unit_scale=True, desc="upload", file=sys.stderr) as bar:
        reader = _Progress(handle, bar)
        request = urllib.request.Request(
            grant["upload_url"],
            data=reader,
            method=grant["method"],
            headers={**grant["headers"], "Content-Length": str(size)},
        )
        try:
            with urllib.request.urlopen(request, timeout=600):
                pass
        except urllib.error.HTTPError as exc:
            raise ApiError(f"upload of {path} failed: {exc.reason}", exc.code, "upload_failed") from None
        except (urllib.error.URLError, OSError) as exc:
            failed = api.unreachable(grant["upload_url"].split("?")[0], exc)
            failed.message = f"upload of {path} failed: {failed.message}"
            raise failed from None
    return str(grant["input_url"])


class _Progress:
    """A file reader that advances a progress bar (urllib streams an object with ``read``)."""

    def __init__(self, handle: Any, bar: Any) -> None:
        self.handle, self.bar = handle, bar

    def read(self, size: int = -1) -> bytes:
        block = self.handle.read(size if size > 0 else 1 << 20)
        self.bar.update(len(block))
        found: bytes = block
        return found


def wait_for(client: Client, job_id: str, total: int, interval: float = 0.5) -> BatchJob:
    """Poll the job with a progress bar until it finishes; its last status."""
    from tqdm import tqdm

    with tqdm(total=total, unit="item", desc=job_id[:8], file=sys.stderr) as bar:
        while True:
            status = client.call("GET", f"/v1/batch/{job_id}")
            bar.update(int(status["completed"]) - bar.n)
            bar.set_postfix(failed=status["failed"], status=status["status"])
            if status["status"] in FINISHED:
                found: BatchJob = status
                return found
            time.sleep(interval)


def job_seconds(status: BatchJob) -> float | None:
    """How long the job ran by the server's clock (started, else created, to finished); None while it runs."""
    from datetime import datetime

    begun, finished = status.get("started_at") or status.get("created_at"), status.get("finished_at")
    if not begun or not finished:
        return None
    return max((datetime.fromisoformat(str(finished)) - datetime.fromisoformat(str(begun))).total_seconds(), 0.0)


def summary(status: BatchJob, elapsed_s: float, source: InputFile | None = None, earlier: bool = False) -> str:
    """What a person wants after ``--wait``: counts, time and speed (by the server's clock), where the results
    are, which lines failed; ``earlier``: the job had finished before the wait began."""
    rate = f", {status['completed'] / elapsed_s:,.1f} items/s" if elapsed_s >= 0.1 and status["completed"] else ""
    when = f", finished {output.when(status.get('finished_at'))}" if earlier else ""
    lines = [
        f"job {status['job_id']}: {status['status']}" + (" (it had already finished)" if earlier else ""),
        f"  succeeded {status['succeeded']}, failed {status['failed']} of {status['total']}",
        f"  time {f'{elapsed_s:.1f}s' if elapsed_s >= 0.1 else 'under 0.1s'}{rate}{when}",
        f"  results: kinfer batch results {status['job_id']}",
    ]
    if status.get("error"):
        lines.append(f"  error: {status['error']}")
    if comparison := status.get("comparison"):
        mad = comparison["mean_abs_diff"]
        lines.append(
            f"  replay: {comparison['equal']} equal, {comparison['differing']} differing of {comparison['compared']}"
            f" compared; mean |diff| of numeric outputs {'-' if mad is None else f'{mad:.6g}'}"
            f" ({comparison['failed']} failed, {comparison['skipped']} captured requests skipped)"
        )
        for diff in (comparison.get("differences") or [])[:SHOWN_FAILURES]:
            lines.append(
                f"    item {diff['index']} (request {diff.get('request_id') or '-'}): captured "
                f"{json.dumps(diff['captured'])[:80]}, replayed {json.dumps(diff['replayed'])[:80]}"
            )
    errors = status.get("errors") or []
    for err in errors[:SHOWN_FAILURES]:
        where = f"line {source.line_of(err['index'])}" if source else f"item {err['index']}"
        lines.append(f"  {where}: {err.get('error')}")
    if status["failed"] > min(len(errors), SHOWN_FAILURES):
        lines.append(f"  ... every failure: kinfer batch results {status['job_id']} --failed")
    return "\n".join(lines)


# -- read ----------------------------------------------------------------------------------
def _status(client: Client, args: argparse.Namespace) -> int:
    job = client.call("GET", f"/v1/batch/{resolve_job_id(client, args.job_id)}")
    output.emit(args, job, fields=(*STATUS_FIELDS, "errors"))
    return 0


def _list(client: Client, args: argparse.Namespace) -> int:
    page = client.call("GET", "/v1/batch", query={"status": args.status, "limit": args.limit, "offset": args.offset})
    output.emit(args, page, rows="jobs", columns=JOB_COLUMNS)
    return 0


def _cancel(client: Client, args: argparse.Namespace) -> int:
    answer = client.call("DELETE", f"/v1/batch/{resolve_job_id(client, args.job_id)}")
    if args.output == "table":
        print(f"job {answer['job_id']}: {answer['status']}")
    else:
        output.emit(args, answer)
    return 0


def _results(client: Client, args: argparse.Namespace) -> int:
    if args.output not in RESULT_FORMATS:  # `-o FILE`, as before -o meant the format
        if args.out is not None:
            raise UsageError(f"-o takes a format ({', '.join(RESULT_FORMATS)}), not {args.output!r}")
        print(f"kinfer: -o FILE is deprecated for batch results; use --out {args.output}", file=sys.stderr)
        args.out, args.output = Path(args.output), "jsonl"
    job_id = resolve_job_id(client, args.job_id)
    status = client.call("GET", f"/v1/batch/{job_id}")
    if not status.get("result_url"):
        raise ApiError(
            f"job {job_id} is {status['status']}; it has no results yet",
            code="no_results",
            hint=f"`kinfer batch wait {job_id}` waits until it finishes",
        )
    try:
        with urllib.request.urlopen(status["result_url"], timeout=300) as response:
            out = args.out.open("wb") if args.out else sys.stdout.buffer
            try:
                _write_results(response, out, args)
            finally:
                if args.out:
                    out.close()
    except urllib.error.HTTPError as exc:
        raise ApiError(f"results of job {job_id}: {exc.reason}", exc.code, "results_failed") from None
    except urllib.error.URLError as exc:
        failed = api.unreachable(status["result_url"].split("?")[0], exc)
        failed.message = f"results of job {job_id}: {failed.message}"
        raise failed from None
    return 0


def _write_results(response: Any, out: Any, args: argparse.Namespace) -> None:
    if args.output == "jsonl" and not args.failed:
        while block := response.read(1 << 20):
            out.write(block)
        return
    lines = (json.loads(line) for line in _lines(response))
    selected = [item for item in lines if not args.failed or "error" in item]
    if args.output == "jsonl":
        out.write(b"".join(json.dumps(item).encode() + b"\n" for item in selected))
        return
    columns = [
        output.column("INDEX", "index"),
        output.column("PREDICTION", "prediction"),
        output.column("ERROR", "error"),
    ]
    out.write((output.render(args.output, selected, columns=columns) + "\n").encode())


def _lines(response: Any) -> Iterator[bytes]:
    for line in response:
        if line.strip():
            yield line
