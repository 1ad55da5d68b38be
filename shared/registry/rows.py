"""A row of ``models`` as the API shows it, model ids, and the Redis keys of the registry cache."""

from __future__ import annotations

import uuid
from typing import Any, TypedDict

from shared.domain import ModelState, ModelVersion, TritonOptions
from shared.errors import NotFound
from shared.registry.rules import UUID

GEN_KEY = "kinfer:reg:gen"
NAMES_KEY = "kinfer:reg:names"
EVENTS_CHANNEL = "kinfer:reg:events"
SERVABLE = ModelState.READY


def to_json(row: Any) -> ModelVersion:
    m = row._mapping
    urls = list(m["backend_urls"] or [])
    return {
        "id": str(m["id"]),
        "name": m["name"],
        "version": m["version"],
        "framework": m["framework"],
        "format": m["format"],
        "backend_url": urls[0] if urls else None,
        "backend_urls": urls,
        "triton_model": m["triton_model"],
        "triton_version": m["triton_version"],
        "description": m["description"],
        "tags": list(m["tags"]),
        "metadata": dict(m["metadata"]),
        "status": m["status"],
        "state": m["state"],
        "state_reason": m["state_reason"],
        "artifact_uri": m["artifact_uri"],
        "repository_uri": m["repository_uri"],
        "artifact_format": m["artifact_format"],
        "artifact_sha256": m["artifact_sha256"],
        "artifact_bytes": m["artifact_bytes"],
        "triton_config": m["triton_config"],
        "created_at": m["created_at"].isoformat(),
        "updated_at": m["updated_at"].isoformat(),
    }


# Fields added by the lifecycle (migrations 0004 and 0007). A copy cached by an older revision lacks them; it
# reads as what such a row is: a ready version Kinfer does not manage.
class _Lifecycle(TypedDict):
    """The lifecycle's fields of a ``ModelVersion``, as a row from before them reads."""

    triton_version: int | None
    state: str
    state_reason: str | None
    artifact_uri: str | None
    repository_uri: str | None
    artifact_format: str | None
    artifact_sha256: str | None
    artifact_bytes: int | None
    triton_config: TritonOptions | None


_LIFECYCLE_DEFAULTS: _Lifecycle = {
    "triton_version": None,
    "state": ModelState.READY,
    "state_reason": None,
    "artifact_uri": None,
    "repository_uri": None,
    "artifact_format": None,
    "artifact_sha256": None,
    "artifact_bytes": None,
    "triton_config": None,
}


def _complete(model: ModelVersion) -> ModelVersion:
    """``model`` as read from the cache, with the lifecycle's fields an older copy may lack."""
    return {**_LIFECYCLE_DEFAULTS, **model}


def parse_id(raw: str) -> uuid.UUID:
    """A model id in canonical form (8-4-4-4-12 hex); anything else is an unknown model (404)."""
    if not isinstance(raw, str) or not UUID.fullmatch(raw):
        raise NotFound(f"model {str(raw)[:64]!r} not found")
    return uuid.UUID(raw)


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _id_key(model_id: object) -> str:
    return f"kinfer:reg:id:{model_id}"


def _nv_key(name: str, version: str) -> str:
    return f"kinfer:reg:nv:{name}:{version}"


def _view_key(name: str) -> str:
    return f"kinfer:reg:view:{name}"
