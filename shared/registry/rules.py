"""What a registration may say: its fields, their patterns and choices, the checks of a body
(create, update, a PUT of the whole representation) and of the backends it names (the allow-list check,
which reads the settings, is ``ModelRegistry.check_backends_allowed``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Required, TypedDict

from shared import validation as v
from shared.domain import JSONObject, ModelState, ModelStatus, ModelVersion, TritonOptions
from shared.errors import InvalidInput

FRAMEWORKS = ("pytorch", "tensorflow", "onnx", "scikit-learn", "xgboost", "tensorrt", "python")
FORMATS = ("onnx", "torchscript", "savedmodel", "plan", "pickle", "python")
STATUSES = tuple(ModelStatus)  # "active", "inactive", "deprecated"
STATES = tuple(ModelState)  # "awaiting_upload", "pending", "loading", "ready", "failed"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
VERSION = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,2}")  # ASCII digits: a version goes into HTTP headers
ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")  # starts with a letter: never mistaken for a version
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/=-]{0,63}")
BACKEND_URL = re.compile(r"(?:(?:grpc|http|https)://)?[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})(?::[0-9]{1,5})?/?")
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
MAX_TAGS, MAX_BACKENDS, MAX_METADATA_BYTES, MAX_DESCRIPTION = 32, 16, 16384, 4096
DEFAULT_ALIAS = "production"

CREATE_FIELDS = (
    "name",
    "version",
    "framework",
    "format",
    "backend_url",
    "backend_urls",
    "triton_model",
    "triton_version",
    "description",
    "tags",
    "metadata",
    "status",
)
UPDATE_FIELDS = ("description", "status", "tags", "metadata", "backend_url", "backend_urls", "triton_model")
READ_ONLY = (
    "id",
    "created_at",
    "updated_at",
    "state",
    "state_reason",
    "repository_uri",
    "artifact_format",
    "artifact_sha256",
    "artifact_bytes",
)
# ``triton_config`` (the push options) is accepted by a push only: ``shared.lifecycle.artifacts`` checks it.


class ModelChanges(TypedDict, total=False):
    """Validated column values of the fields both a create and an update accept."""

    description: str
    status: str
    tags: list[str]
    metadata: JSONObject
    triton_model: str
    backend_urls: list[str]
    updated_at: object  # a SQL expression (the statement's clock), set by the update itself


class NewModel(ModelChanges, total=False):
    """The column values of a new ``models`` row: ``validate_create``'s, then ``id`` (and the lifecycle's
    columns) added by the caller."""

    name: Required[str]
    version: Required[str]
    framework: Required[str]
    format: Required[str]
    triton_version: int | None
    id: uuid.UUID
    state: str
    state_reason: str | None
    artifact_uri: str | None
    repository_uri: str | None
    artifact_format: str | None
    artifact_sha256: str | None
    artifact_bytes: int | None
    triton_config: TritonOptions | None


def _backend_urls(body: Mapping[str, object]) -> list[str] | None:
    if "backend_url" in body and "backend_urls" in body:
        raise InvalidInput("give backend_url or backend_urls, not both", field="backend_urls")
    if "backend_url" in body:
        raw = body["backend_url"]
        return (
            []
            if raw is None
            else [
                v.string(
                    raw,
                    "backend_url",
                    max_len=256,
                    pattern=BACKEND_URL,
                    hint="expected host:port, grpc://host:port or http://host:port",
                )
            ]
        )
    if "backend_urls" in body:
        raw = body["backend_urls"]
        if not isinstance(raw, list) or len(raw) > MAX_BACKENDS:
            raise InvalidInput(f"backend_urls must be a list of at most {MAX_BACKENDS} URLs", field="backend_urls")
        urls = [
            v.string(
                u,
                "backend_urls",
                max_len=256,
                pattern=BACKEND_URL,
                hint="expected host:port, grpc://host:port or http://host:port",
            )
            for u in raw
        ]
        if len(set(urls)) != len(urls):
            raise InvalidInput("backend_urls has duplicates", field="backend_urls")
        return urls
    return None


def _tags(raw: object) -> list[str]:
    if not isinstance(raw, list) or len(raw) > MAX_TAGS:
        raise InvalidInput(f"tags must be a list of at most {MAX_TAGS} strings", field="tags")
    tags = [v.string(t, "tags", max_len=64, pattern=TAG, hint="letters, digits and . _ : / = -") for t in raw]
    return list(dict.fromkeys(tags))


def _mutable_fields(body: Mapping[str, object], out: ModelChanges | None = None) -> ModelChanges:
    """Validate the fields both create and update accept; return the column values given (added to ``out``)."""
    if out is None:
        out = {}
    if "description" in body:
        out["description"] = v.string(body["description"], "description", max_len=MAX_DESCRIPTION, allow_empty=True)
    if "status" in body:
        out["status"] = v.choice(body["status"], "status", STATUSES)
    if "tags" in body:
        out["tags"] = _tags(body["tags"])
    if "metadata" in body:
        out["metadata"] = v.json_object(body["metadata"], "metadata", max_bytes=MAX_METADATA_BYTES)
    if "triton_model" in body:
        out["triton_model"] = v.string(body["triton_model"], "triton_model", max_len=128, pattern=NAME)
    urls = _backend_urls(body)
    if urls is not None:
        out["backend_urls"] = urls
    return out


def validate_create(body: object, extra_fields: tuple[str, ...] = ()) -> NewModel:
    """The column values of a new row (``extra_fields``: body fields a caller above handles itself)."""
    fields = v.require_object(body)
    v.reject_unknown(fields, CREATE_FIELDS + extra_fields, READ_ONLY)
    for required in ("name", "version", "framework", "format"):
        if fields.get(required) in (None, ""):
            raise InvalidInput(f"{required} is required", field=required)
    row: NewModel = {
        "name": v.string(
            fields["name"],
            "name",
            max_len=128,
            pattern=NAME,
            hint="start with a letter or digit; then letters, digits, '.', '_' or '-'",
        ),
        "version": v.string(fields["version"], "version", max_len=32, pattern=VERSION, hint="expected 1, 1.0 or 1.0.0"),
        "framework": v.choice(fields["framework"], "framework", FRAMEWORKS),
        "format": v.choice(fields["format"], "format", FORMATS),
    }
    _mutable_fields(fields, row)
    if fields.get("triton_version") is not None:
        raw = fields["triton_version"]
        if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= 2**31 - 1:
            raise InvalidInput(
                "triton_version must be a positive integer (the Triton version this registry version maps to)",
                field="triton_version",
            )
        row["triton_version"] = raw
    row.setdefault("triton_model", row["name"])
    return row


# Fields of the representation (GET) that an update cannot change: a PUT of the object a client read,
# with its changes, is accepted when these still hold their current values. In such an object (its
# "id" is the model's) the fields the server keeps moving may be stale, and are ignored.
ECHOED = frozenset(
    (
        "name",
        "version",
        "framework",
        "format",
        "triton_version",
        "artifact_uri",
        "triton_config",
        "warnings",
        *READ_ONLY,
    )
)
DRIFTING = frozenset(("updated_at", "state", "state_reason", "warnings"))


def _without_echoed(body: Mapping[str, object], current: ModelVersion) -> dict[str, object]:
    """``body`` less the fields that merely repeat ``current`` (a changed one is still refused, naming it)."""
    echo = body.get("id") == current["id"]
    repeated = {k for k, v in body.items() if k in ECHOED and (current.get(k, k) == v or (echo and k in DRIFTING))}
    kept = {k: v for k, v in body.items() if k not in repeated}
    urls = kept.get("backend_urls")
    if "backend_url" in kept and isinstance(urls, list):  # both, as GET shows them: backend_urls is the truth
        if kept["backend_url"] == (urls[0] if urls else None):
            del kept["backend_url"]
    return kept


def validate_update(body: object) -> ModelChanges:
    fields = v.require_object(body)
    for fixed in ("name", "version", "framework", "format", "triton_config"):
        if fixed in fields:
            raise InvalidInput(f"{fixed} cannot be changed; register a new version instead", field=fixed)
    v.reject_unknown(fields, UPDATE_FIELDS, READ_ONLY)
    values = _mutable_fields(fields)
    if not values:
        raise InvalidInput(f"nothing to update; give one of: {', '.join(UPDATE_FIELDS)}", field="body")
    return values


def backend_field(body: object) -> str:
    """The body field that named the backends (for errors)."""
    return "backend_urls" if isinstance(body, dict) and "backend_urls" in body else "backend_url"
