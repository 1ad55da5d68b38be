"""A version's lifecycle seen from the API: its load state per replica, and deleting it with its files."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from shared import registry
from shared.clients.storage import delete_prefix
from shared.errors import KinferError
from shared.lifecycle import replicas

if TYPE_CHECKING:
    from shared.services import Services

log = logging.getLogger(__name__)


def version_status(services: Services, raw_id: str) -> dict[str, Any]:
    """``GET /v1/models/{id}/status``: the load state and, per backend, the replicas that have it."""
    model = registry.get_model(services, raw_id)
    return {
        "id": model["id"],
        "name": model["name"],
        "version": model["version"],
        "status": model["status"],
        "state": model["state"],
        "state_reason": model["state_reason"],
        "triton_model": model["triton_model"],
        "triton_version": model["triton_version"],
        "backends": replicas.summary(services, model),
    }


def delete_version(services: Services, raw_id: str) -> None:
    """Delete a version (409 while an alias points at it), then its files in the model repository.

    The agents unload it after UNLOAD_GRACE_S from their local copies; its Triton version
    number is never handed out again, so removing the repository files at once is safe.
    """
    model = registry.delete_model(services, raw_id)
    if model.get("repository_uri") and model.get("triton_version"):
        from shared.lifecycle.artifacts import ARTIFACTS
        from shared.lifecycle.repository import Layout

        layout = Layout.of(services.settings)
        tm, number = model["triton_model"], int(model["triton_version"])
        root = f"{layout.prefix}/" if layout.prefix else ""
        # Only what Kinfer wrote: the version folder and a kept package; an artifact_uri of the caller's stays.
        for prefix in (layout.version_prefix(tm, number), f"{root}{ARTIFACTS}/{tm}/{number}/"):
            _remove(services, layout.bucket, prefix, model)


def _remove(services: Services, bucket: str, prefix: str, model: dict[str, Any]) -> None:
    try:
        delete_prefix(services.s3, bucket, prefix)
    except KinferError as exc:
        log.warning(
            "files of deleted model %s version %s stay in s3://%s/%s: %s",
            model["name"],
            model["version"],
            bucket,
            prefix,
            exc.message,
        )
