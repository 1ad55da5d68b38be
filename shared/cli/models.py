"""``kinfer models push|list|show|promote|rollback|split|delete``: the model lifecycle over the HTTP API.

``push FILE`` registers a version for upload, streams the file to ``PUT /v1/models/{id}/artifact``
with a progress bar (and its SHA-256, which the server checks), then follows the load state
(``--wait``) and can point an alias at it (``--alias production``). If the upload fails or
is interrupted, the version it registered is deleted again. Every request goes through
``Api`` (stdlib urllib), the one place that knows the URL and the key; which URL and key is
decided as for every API command (``--url``/``--key``, ``KINFER_URL``/``KINFER_API_KEY``, the
config file's context: ``shared.cli.api``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, TypedDict, cast

from shared.cli import api as connection
from shared.cli import output
from shared.cli.errors import ApiError, UsageError
from shared.domain import ModelState, ModelVersion

SETTLED = (ModelState.READY, ModelState.FAILED)


class Api:
    """A tiny JSON client of /v1/models (and the artifact upload)."""

    def __init__(self, base_url: str, key: str | None, timeout: float = 60) -> None:
        self.base_url, self.key, self.timeout = base_url.rstrip("/"), key, timeout

    def _request(
        self,
        method: str,
        path: str,
        data: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Accept": "application/json", **(headers or {})}
        )
        if self.key:
            request.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                raw = response.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read())
            except ValueError:
                body = {}
            raise ApiError(
                f"{method} {path.split('?')[0]} -> {exc.code}: {body.get('error', exc.reason)}",
                exc.code,
                str(body.get("code", "")),
            ) from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        return self._request(method, path, data, {"Content-Type": "application/json"} if data else None)

    def upload(self, path: str, file: Path, sha256: str, progress: Any) -> Any:
        size = file.stat().st_size
        with file.open("rb") as handle:
            return self._request(
                "PUT",
                f"{path}?sha256={sha256}",
                _Progress(handle, progress),
                {"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                timeout=3600,
            )


class _Progress:
    """A file reader that advances a progress bar (urllib streams an object with ``read``)."""

    def __init__(self, handle: Any, bar: Any) -> None:
        self.handle, self.bar = handle, bar

    def read(self, size: int = -1) -> bytes:
        block = self.handle.read(size if size > 0 else 1 << 20)
        self.bar.update(len(block))
        return bytes(block)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "models", help="push model files, follow versions, move aliases (canary, promote, rollback)"
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
    push.set_defaults(func=_action(_push))
    lst = sub.add_parser("list", help="list model versions, newest first")
    lst.add_argument("--name", help="only this model")
    lst.add_argument("--limit", type=int, default=50)
    output.add_output_arg(lst)
    lst.set_defaults(func=_action(_list))
    show = sub.add_parser("show", help="a model's versions and aliases, or one version with its replicas")
    show.add_argument("name")
    show.add_argument("version", nargs="?")
    output.add_output_arg(show)
    show.set_defaults(func=_action(_show))
    promote = sub.add_parser("promote", help="point an alias at one version (zero downtime)")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--alias", default="production")
    promote.set_defaults(func=_action(_promote))
    rollback = sub.add_parser("rollback", help="move an alias back to where it pointed before")
    rollback.add_argument("name")
    rollback.add_argument("--alias", default="production")
    rollback.set_defaults(func=_action(_rollback))
    split = sub.add_parser("split", help="split an alias between versions by weight (canary): 3=90 4=10")
    split.add_argument("name")
    split.add_argument("weights", nargs="+", metavar="VERSION=PERCENT")
    split.add_argument("--alias", default="production")
    split.set_defaults(func=_action(_split))
    delete = sub.add_parser("delete", help="delete a version (refused while an alias points at it)")
    delete.add_argument("name")
    delete.add_argument("version")
    delete.set_defaults(func=_action(_delete))
    for p in (push, lst, show, promote, rollback, split, delete):
        connection.add_connection_args(p)


def _action(func: Any) -> Any:
    """Run ``func(Api, args)`` on the connection the flags, environment or context name (``shared.cli.api``);
    failures reach the user as one line through ``shared.cli.main``."""

    def run(args: argparse.Namespace) -> int:
        conn = connection.connect(args)
        try:
            return int(func(Api(conn.url, conn.key), args))
        except (OSError, ValueError) as exc:
            raise ApiError(str(exc)) from None

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
    )
    if not (args.wait or args.alias):
        print(
            f"{model['name']} {model['version']}: {model['state']} (kinfer models show {model['name']} "
            f"{model['version']} follows it)"
        )
        return 0
    final = wait_ready(api, model["id"], args.timeout)
    if final["state"] != "ready":
        print(
            f"{final['name']} {final['version']}: {final['state']}: {final.get('state_reason') or ''}", file=sys.stderr
        )
        return 1
    print(
        f"{final['name']} {final['version']}: ready (Triton {final['triton_model']} version {final['triton_version']})"
    )
    if args.alias:
        moved = api.call("PUT", _alias_path(final["name"], args.alias), {"version": final["version"]})
        print(f"alias {args.alias} -> {_weights(moved['versions'])}")
    return 0


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
    show_progress: bool = True,
) -> ModelVersion:
    """Register ``name``/``version`` for upload and upload ``file``; the installed version (pending)."""
    if not file.is_file():
        raise ValueError(f"{file} is not a file")
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
            raise ValueError(f"version still {model['state']} after {timeout:.0f}s")
        time.sleep(interval)


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# -- reading ------------------------------------------------------------------------------
def _list(api: Api, args: argparse.Namespace) -> int:
    query = {"limit": str(args.limit), **({"name": args.name} if args.name else {})}
    page = api.call("GET", "/v1/models?" + urllib.parse.urlencode(query))
    if args.output != "table":
        output.emit(args, page)
        return 0
    rows = [
        (
            m["name"],
            m["version"],
            m["status"],
            m["state"],
            f"{m['triton_model']}:{m['triton_version'] or '-'}",
            m["created_at"][:19],
        )
        for m in page["models"]
    ]
    _table(("NAME", "VERSION", "STATUS", "STATE", "TRITON", "CREATED"), rows)
    if page["total"] > len(rows):
        print(f"({len(rows)} of {page['total']}; --limit shows more)")
    return 0


def _show(api: Api, args: argparse.Namespace) -> int:
    name = urllib.parse.quote(args.name, safe="")
    if args.version:
        model = api.call("GET", f"/v1/models/by-name/{name}/{urllib.parse.quote(args.version, safe='')}")
        status = api.call("GET", f"/v1/models/{model['id']}/status")
        shown = dict(model, backends=status["backends"])
        if args.output == "table":
            print(json.dumps(shown, indent=2))
        else:
            output.emit(args, shown)
        return 0
    page = api.call("GET", "/v1/models?" + urllib.parse.urlencode({"name": args.name, "limit": "500"}))
    if not page["models"]:
        raise ApiError(f"model {args.name!r} not found", 404)
    aliases = api.call("GET", f"/v1/models/by-name/{name}/aliases")["aliases"]
    if args.output != "table":
        output.emit(args, {"name": args.name, "versions": page["models"], "aliases": aliases})
        return 0
    rows = [
        (m["version"], m["status"], m["state"], str(m["triton_version"] or "-"), (m["state_reason"] or "")[:60])
        for m in page["models"]
    ]
    _table(("VERSION", "STATUS", "STATE", "TRITON", "REASON"), rows)
    for alias in aliases:
        previous = f" (before: {_weights(alias['previous'])})" if alias["previous"] else ""
        print(f"alias {alias['alias']} -> {_weights(alias['versions'])}{previous}")
    return 0


# -- aliases --------------------------------------------------------------------------------
def _alias_path(name: str, alias: str) -> str:
    return f"/v1/models/by-name/{urllib.parse.quote(name, safe='')}/aliases/{urllib.parse.quote(alias, safe='')}"


def _weights(versions: dict[str, int]) -> str:
    if len(versions) == 1:
        return next(iter(versions))
    return ", ".join(f"{v}={w}%" for v, w in versions.items())


def _promote(api: Api, args: argparse.Namespace) -> int:
    moved = api.call("PUT", _alias_path(args.name, args.alias), {"version": args.version})
    print(f"alias {args.alias} of {args.name} -> {_weights(moved['versions'])}")
    return 0


def _rollback(api: Api, args: argparse.Namespace) -> int:
    moved = api.call("POST", _alias_path(args.name, args.alias) + "/rollback")
    print(f"alias {args.alias} of {args.name} -> {_weights(moved['versions'])} (rolled back)")
    return 0


def parse_weights(items: list[str]) -> dict[str, int]:
    """``["3=90", "4=10"]`` -> ``{"3": 90, "4": 10}``; ValueError naming a malformed item."""
    weights: dict[str, int] = {}
    for item in items:
        version, sep, weight = item.partition("=")
        if not sep or not version or not weight.isdigit():
            raise ValueError(f"{item!r} is not VERSION=PERCENT (e.g. 3=90)")
        weights[version] = int(weight)
    return weights


def _split(api: Api, args: argparse.Namespace) -> int:
    moved = api.call("PUT", _alias_path(args.name, args.alias), {"versions": parse_weights(args.weights)})
    print(f"alias {args.alias} of {args.name} -> {_weights(moved['versions'])}")
    return 0


def _delete(api: Api, args: argparse.Namespace) -> int:
    name, version = urllib.parse.quote(args.name, safe=""), urllib.parse.quote(args.version, safe="")
    model = api.call("GET", f"/v1/models/by-name/{name}/{version}")
    api.call("DELETE", f"/v1/models/{model['id']}")
    print(f"deleted {args.name} {args.version}")
    return 0


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
