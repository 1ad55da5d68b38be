"""A version's lifecycle seen from the API: its load state per replica, and deleting it with its files."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, TypedDict

from shared.clients.storage import delete_prefix
from shared.errors import KinferError

if TYPE_CHECKING:
    from shared.audit import Actor
    from shared.domain import ModelVersion
    from shared.lifecycle.replicas import BackendLoad, Replicas
    from shared.registry import ModelRegistry
    from shared.settings import Settings

log = logging.getLogger(__name__)


class VersionStatus(TypedDict):
    """``GET /v1/models/{id}/status``: a version's load state and, per backend, its replicas."""

    id: str
    name: str
    version: str
    status: str
    state: str
    state_reason: str | None
    triton_model: str
    triton_version: int | None
    backends: dict[str, BackendLoad]


class Versions:
    """A version seen from the API: its load state per replica, and its deletion with its files."""

    def __init__(self, registry: ModelRegistry, replicas: Replicas, s3: Any, settings: Settings) -> None:
        self.registry = registry
        self.replicas = replicas
        self.s3 = s3
        self.settings = settings

    def version_status(self, raw_id: str) -> VersionStatus:
        """``GET /v1/models/{id}/status``: the load state and, per backend, the replicas that have it."""
        model = self.registry.get_model(raw_id)
        return {
            "id": model["id"],
            "name": model["name"],
            "version": model["version"],
            "status": model["status"],
            "state": model["state"],
            "state_reason": model["state_reason"],
            "triton_model": model["triton_model"],
            "triton_version": model["triton_version"],
            "backends": self.replicas.summary(model),
        }

    def delete_version(self, raw_id: str, actor: Actor | None = None) -> None:
        """Delete a version (409 while an alias points at it), then its files in the model repository.

        The agents unload it after UNLOAD_GRACE_S from their local copies; its Triton version
        number is never handed out again, so removing the repository files at once is safe.
        """
        model = self.registry.delete_model(raw_id, actor)
        number = model.get("triton_version")
        if model.get("repository_uri") and number:
            from shared.lifecycle.artifacts import ARTIFACTS
            from shared.lifecycle.repository import Layout

            layout = Layout.of(self.settings)
            tm = model["triton_model"]
            root = f"{layout.prefix}/" if layout.prefix else ""
            # Only what Kinfer wrote: the version folder and a kept package; an artifact_uri of the caller's stays.
            for prefix in (layout.version_prefix(tm, number), f"{root}{ARTIFACTS}/{tm}/{number}/"):
                self._remove(layout.bucket, prefix, model)

    def _remove(self, bucket: str, prefix: str, model: ModelVersion) -> None:
        try:
            delete_prefix(self.s3, bucket, prefix)
        except KinferError as exc:
            log.warning(
                "files of deleted model %s version %s stay in s3://%s/%s: %s",
                model["name"],
                model["version"],
                bucket,
                prefix,
                exc.message,
            )
