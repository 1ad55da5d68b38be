"""``kinfer models push|list|show|versions|aliases|promote|rollback|split|delete|delete-alias``: the model
lifecycle over the HTTP API.

``push FILE`` registers a version for upload, streams the file to ``PUT /v1/models/{id}/artifact``
with a progress bar (and its SHA-256, which the server checks), then follows the load state
(``--wait``) and can point an alias at it (``--alias production``). If the upload fails or
is interrupted, the version it registered is deleted again. Every request goes through
``Api`` (``shared.cli.api.Client``), the one place that knows the URL and the key; which URL and
key is decided as for every API command (``--url``/``--key``, ``KINFER_URL``/``KINFER_API_KEY``,
the config file's context). The read commands (``list``, ``show``, ``versions``, ``aliases``)
and ``delete-alias`` live in ``shared.cli.modelviews``; ``shadow``, ``shadow-status`` and ``rollout`` in
``shared.cli.rollout``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, TypedDict, cast

from shared.cli import api as connection
from shared.cli import modelviews, output, rollout
from shared.cli.api import Client, Connection
from shared.cli.errors import EXIT_CODES, ApiError, UsageError
from shared.domain import ModelState, ModelVersion, TritonOptions

SETTLED = (ModelState.READY, ModelState.FAILED)


class Api(Client):
    """The API client of the model commands (``Api(url, key)``, as scripts and benchmarks build it)."""

    def __init__(self, base_url: str, key: str | None) -> None:
        super().__init__(Connection(base_url, key or "", key_source="--key"))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "models",
        help="push model files, follow versions, move aliases (canary, promote, rollback)",
        epilog=EXIT_CODES,
    )
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    push = sub.add_parser(
        "push", help="upload a model file (.onnx, or a .tar.gz Triton model directory) as a new version"
    )
    push.add_argument("file", type=Path, help="model.onnx, or model.tar.gz holding config.pbtxt and 1/...")
    push.add_argument("--name", required=True, help="model name")
    push.add_argument("--version", required=True, help="new version: 1, 1.0 or 1.0.0")
    push.add_argument("--alias", help="point this alias at the version once it is ready (e.g. production)")
    push.add_argument("--wait", action="store_true", help="wait until the version is ready (or failed)")
    push.add_argument("--framework", help="default: onnx for .onnx, python for .tar.gz")
    push.add_argument("--format", help="default: onnx for .onnx, python for .tar.gz")
    push.add_argument("--triton-model", help="Triton model name (default: the model name)")
    push.add_argument("--description", default=None)
    push.add_argument("--tag", action="append", default=None, help="a tag (repeat for several)")
    push.add_argument("--timeout", type=float, default=300, help="seconds --wait waits (default 300)")
    push.add_argument(
        "--max-batch-size",
        type=int,
        help="ONNX: rows per Triton batch, 0 for no batch dimension (default ONNX_MAX_BATCH_SIZE when batched)",
    )
    push.add_argument(
        "--dynamic-batching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ONNX: Triton's dynamic batcher (default: on when batched)",
    )
    push.add_argument("--max-queue-delay-us", type=int, help="ONNX: how long the dynamic batcher waits for a batch")
    push.add_argument("--instances", type=int, help="ONNX: model instances (instance_group count)")
    push.add_argument("--device", choices=("cpu", "gpu"), help="ONNX: KIND_CPU or KIND_GPU instances")
    output.add_output_arg(push)
    push.set_defaults(func=_action(_push))
    reads = modelviews.register(sub, _action)  # list, show, versions, aliases, delete-alias
    promote = sub.add_parser("promote", help="point an alias at one version (zero downtime)")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--alias", default="production", help="the alias to point at VERSION (default production)")
    promote.add_argument(
        "--allow-signature-change", action="store_true", help="move even if the version's inputs or outputs differ"
    )
    output.add_output_arg(promote)
    promote.set_defaults(func=_action(_promote))
    rollback = sub.add_parser("rollback", help="move an alias back to where it pointed before")
    rollback.add_argument("name")
    rollback.add_argument("--alias", default="production", help="the alias to move back (default production)")
    output.add_output_arg(rollback)
    rollback.set_defaults(func=_action(_rollback))
    split = sub.add_parser("split", help="split an alias between versions by weight (canary): 3=90 4=10")
    split.add_argument("name")
    split.add_argument("weights", nargs="+", metavar="VERSION=PERCENT")
    split.add_argument("--alias", default="production", help="the alias to split (default production)")
    split.add_argument(
        "--allow-signature-change", action="store_true", help="split even if the versions' inputs or outputs differ"
    )
    output.add_output_arg(split)
    split.set_defaults(func=_action(_split))
    delete = sub.add_parser(
        "delete", help="delete a version (refused while an alias points at it: move or delete the alias first)"
    )
    delete.add_argument("name")
    delete.add_argument("version")
    output.add_output_arg(delete)
    delete.set_defaults(func=_action(_delete))
    gated = rollout.register(sub, _action)  # shadow, shadow-status, rollout start|status|pause|resume|abort
    for p in (push, *reads, promote, rollback, split, delete, *gated):
        connection.add_connection_args(p)


def _action(func: Any) -> Any:
    """Run ``func(Api, args)`` on the connection the flags, environment or context name (``shared.cli.api``);
    failures reach the user through ``shared.cli.main``, with hints that name the model."""

    def run(args: argparse.Namespace) -> int:
        conn = connection.connect(args)
        return int(func(Api(conn.url, conn.key), args))

    return run


# -- push ---------------------------------------------------------------------------------
def _push(api: Api, args: argparse.Namespace) -> int:
    if args.alias is not None:  # checked before anything is uploaded: a bad name must not leave a version behind
        from shared.registry.rules import ALIAS

        if not ALIAS.fullmatch(args.alias):
            raise UsageError(
                f"--alias {args.alias[:64]!r} is not an alias name: a letter, then letters, digits, '_' or '-' "
                "(at most 64); nothing was pushed"
            )
    try:
        model = push(
            api,
            args.file,
            args.name,
            args.version,
            framework=args.framework,
            fmt=args.format,
            triton_model=args.triton_model,
            description=args.description,
            tags=args.tag,
            triton_config=push_options(args),
        )
    except ApiError as exc:
        if exc.status == 409 and exc.field == "version" and not exc.hint:  # the name and version exist already
            exc.hint = (
                f"versions are never overwritten: push another --version (`kinfer models versions {args.name}` lists "
                f"them), or delete this one first with `kinfer models delete {args.name} {args.version}`"
            )
        raise
    say = _sayer(args)  # -o json|yaml: the version (and the alias) on stdout, these lines on stderr
    if not (args.wait or args.alias):
        say(
            f"{model['name']} {model['version']}: {model['state']} (kinfer models show {model['name']} "
            f"{model['version']} follows it)"
        )
        return _emitted(args, model)
    final = wait_ready(api, model["id"], args.timeout)
    if final["state"] != "ready":
        print(
            f"{final['name']} {final['version']}: {final['state']}: {final.get('state_reason') or ''}", file=sys.stderr
        )
        _emitted(args, final)
        return 1
    say(f"{final['name']} {final['version']}: ready (Triton {final['triton_model']} version {final['triton_version']})")
    if not args.alias:
        return _emitted(args, final)
    moved = api.call("PUT", _alias_path(final["name"], args.alias), {"version": final["version"]})
    say(f"alias {args.alias} -> {_weights(moved['versions'])}")
    return _emitted(args, dict(final, alias=moved))


def _sayer(args: argparse.Namespace) -> Any:
    """``print`` for ``-o table``; for ``-o json|yaml``, the same lines to stderr (stdout holds the data)."""
    if args.output == "table":
        return print
    return lambda line: print(line, file=sys.stderr)


def _emitted(args: argparse.Namespace, data: Any) -> int:
    if args.output != "table":
        output.emit(args, data)
    return 0


def push_options(args: argparse.Namespace) -> TritonOptions | None:
    """The ``triton_config`` of the push flags, checked as the API checks it (a usage error naming the flag)."""
    from shared.errors import InvalidInput
    from shared.lifecycle import options

    given = {k: getattr(args, k) for k in options.KEYS if getattr(args, k) is not None}
    if given and args.file.name.endswith((".tar.gz", ".tgz")):
        raise UsageError(
            "--max-batch-size, --dynamic-batching, --max-queue-delay-us, --instances and --device shape the "
            "config.pbtxt Kinfer writes for an ONNX file; a .tar.gz package brings its own; nothing was pushed"
        )
    try:
        return options.parse(given)
    except InvalidInput as exc:
        flag = "--" + (exc.field or "").removeprefix("triton_config.").replace("_", "-")
        raise UsageError(f"{flag}: {exc.message}; nothing was pushed") from None


class RegisterBody(TypedDict, total=False):
    """The POST /v1/models body of a push (``upload``: the file follows)."""

    name: str
    version: str
    upload: bool
    framework: str
    format: str
    triton_model: str
    description: str
    tags: list[str]
    triton_config: TritonOptions


def push(
    api: Api,
    file: Path,
    name: str,
    version: str,
    *,
    framework: str | None = None,
    fmt: str | None = None,
    triton_model: str | None = None,
    description: str | None = None,
    tags: list[str] | None = None,
    triton_config: TritonOptions | None = None,
    show_progress: bool = True,
) -> ModelVersion:
    """Register ``name``/``version`` for upload and upload ``file``; the installed version (pending)."""
    if not file.is_file():
        raise UsageError(
            f"{file} {'is not a file' if file.exists() else 'does not exist'}; nothing was pushed",
            hint="give a model.onnx, or a .tar.gz Triton model folder",
        )
    package = file.name.endswith((".tar.gz", ".tgz"))
    body: RegisterBody = {
        "name": name,
        "version": version,
        "upload": True,
        "framework": framework or ("python" if package else "onnx"),
        "format": fmt or ("python" if package else "onnx"),
    }
    if triton_model is not None:
        body["triton_model"] = triton_model
    if description is not None:
        body["description"] = description
    if tags is not None:
        body["tags"] = tags
    if triton_config:
        body["triton_config"] = triton_config
    digest = _sha256(file)
    created = api.call("POST", "/v1/models", body)
    from tqdm import tqdm

    try:
        with tqdm(
            total=file.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"push {name} {version}",
            file=sys.stderr,
            disable=not show_progress,
        ) as bar:
            return cast(ModelVersion, dict(api.upload(f"/v1/models/{created['id']}/artifact", file, digest, bar)))
    except BaseException:
        try:  # nothing half-registered: the version this push created goes again
            api.call("DELETE", f"/v1/models/{created['id']}")
        except (ApiError, OSError):
            print(f"warning: could not delete the unfinished version {created['id']}", file=sys.stderr)
        raise


def wait_ready(api: Api, model_id: str, timeout: float, interval: float = 0.25) -> ModelVersion:
    """Poll a version until it is ready or failed (printing its state as it changes)."""
    deadline, last = time.monotonic() + timeout, ""
    while True:
        model = api.call("GET", f"/v1/models/{model_id}")
        if model["state"] != last:
            last = model["state"]
            print(f"  state: {last}", file=sys.stderr)
        if model["state"] in SETTLED:
            return cast(ModelVersion, dict(model))
        if time.monotonic() > deadline:
            raise ApiError(
                f"version still {model['state']} after {timeout:.0f}s",
                code="timeout",
                hint=f"`kinfer models show {model['name']} {model['version']}` follows it",
            )
        time.sleep(interval)


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# -- aliases --------------------------------------------------------------------------------
_alias_path, _weights = modelviews.alias_path, modelviews.weights


def _moved(args: argparse.Namespace, moved: Any, note: str = "") -> int:
    """Print the alias as it now is: a line, or the API's answer with ``-o json|yaml``."""
    if args.output == "table":
        print(f"alias {args.alias} of {args.name} -> {_weights(moved['versions'])}{note}")
    else:
        output.emit(args, moved)
    return 0


def _promote(api: Api, args: argparse.Namespace) -> int:
    body = {"version": args.version, **({"allow_signature_change": True} if args.allow_signature_change else {})}
    moved = api.call("PUT", _alias_path(args.name, args.alias), body)
    return _moved(args, moved)


def _rollback(api: Api, args: argparse.Namespace) -> int:
    moved = api.call("POST", _alias_path(args.name, args.alias) + "/rollback")
    return _moved(args, moved, " (rolled back)")


def parse_weights(items: list[str]) -> dict[str, int]:
    """``["3=90", "4=10"]`` -> ``{"3": 90, "4": 10}``; a usage error naming a malformed item."""
    weights: dict[str, int] = {}
    for item in items:
        version, sep, weight = item.partition("=")
        if not sep or not version or not weight.isdigit():
            raise UsageError(
                f"{item!r} is not VERSION=PERCENT", hint="weights look like `kinfer models split NAME 3=90 4=10`"
            )
        weights[version] = int(weight)
    return weights


def _split(api: Api, args: argparse.Namespace) -> int:
    body = {
        "versions": parse_weights(args.weights),
        **({"allow_signature_change": True} if args.allow_signature_change else {}),
    }
    moved = api.call("PUT", _alias_path(args.name, args.alias), body)
    return _moved(args, moved)


def _delete(api: Api, args: argparse.Namespace) -> int:
    name, version = urllib.parse.quote(args.name, safe=""), urllib.parse.quote(args.version, safe="")
    model = api.call("GET", f"/v1/models/by-name/{name}/{version}")
    try:
        api.call("DELETE", f"/v1/models/{model['id']}")
    except ApiError as exc:
        if exc.code == "version_aliased":
            exc.hint = (
                f"`kinfer models aliases {args.name}` lists them; move one with `kinfer models promote {args.name} "
                f"VERSION --alias ALIAS` (or split), or drop it with `kinfer models delete-alias {args.name} ALIAS`"
            )
        raise
    if args.output == "table":
        print(f"deleted {args.name} {args.version}")
    else:
        output.emit(args, {"id": model["id"], "name": args.name, "version": args.version, "deleted": True})
    return 0
