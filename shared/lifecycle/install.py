"""Installing a checked artifact: its files into the model repository, then its row, as one step.

The version's own files go first (``<prefix>/<triton_model>/<n>/``); then, in one transaction
holding the Triton model's row (``triton_models``), the shared ``config.pbtxt`` is written or
checked against the one the live versions use, and the version's row is inserted or moved to
``pending``. Whatever fails, the files written for the version are removed again: nothing is
half-registered. This module also hands out Triton versions (never reused) and keeps each
Triton model to the registry name that first pushed to it.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared import registry
from shared.clients.db import conflict_on
from shared.clients.schema import models, triton_models
from shared.domain import ModelState
from shared.errors import Conflict
from shared.lifecycle import packages, repository
from shared.lifecycle.repository import Layout

if TYPE_CHECKING:
    from shared.domain import ModelVersion
    from shared.lifecycle.backends import BackendAdmin
    from shared.registry import ModelRegistry
    from shared.registry.rules import NewModel
    from shared.settings import Settings

log = logging.getLogger(__name__)

LIVE_STATES = (ModelState.PENDING, ModelState.LOADING, ModelState.READY)


class Installed(TypedDict):
    """The columns an install writes into the version's row."""

    state: str
    state_reason: str | None
    artifact_format: str
    artifact_sha256: str
    artifact_bytes: int
    artifact_uri: str | None
    triton_version: int
    repository_uri: str


@dataclass
class Prepared:
    """A checked artifact, ready to be written into the repository."""

    format: str  # "onnx" | "triton"
    config: str
    version_files: dict[str, Path] = field(default_factory=dict)  # relative to <T>/<n>/
    model_files: dict[str, tuple[Path, str]] = field(default_factory=dict)  # relative to <T>/: (path, sha256)
    in_place: set[str] = field(default_factory=set)  # version files already at their key


class Installer:
    """Installs checked artifacts (files, shared config, row) and hands out Triton versions."""

    def __init__(self, registry: ModelRegistry, s3: Any, settings: Settings, backend_admin: BackendAdmin) -> None:
        self.registry = registry
        self.s3 = s3
        self.settings = settings
        self.backend_admin = backend_admin

    def install(self, row: NewModel | ModelVersion, prepared: Prepared, local: Path, new: bool) -> ModelVersion:
        """Write the version's files, then (one transaction, the Triton model locked) its config and its row.

        ``new``: insert the row (a ``NewModel``, artifact_uri path); else move the awaiting_upload row (a
        ``ModelVersion``) to pending. Whatever fails, the files written for this version are removed again.
        """
        layout = Layout.of(self.settings)
        tm, number = row["triton_model"], triton_version(row["triton_version"])
        written = self._write_version(layout, tm, number, prepared)
        try:
            values: Installed = {
                "state": ModelState.PENDING,
                "state_reason": None,
                "artifact_format": prepared.format,
                "artifact_sha256": file_sha256(local),
                "artifact_bytes": local.stat().st_size,
                "artifact_uri": row["artifact_uri"],
                "triton_version": number,
                "repository_uri": layout.uri(layout.version_prefix(tm, number)),
            }
            with conflict_on(registry.duplicate(row["name"], row["version"]), field="version"):
                with self.registry.writing() as write:
                    self._use_config(write.conn, layout, tm, prepared, exclude=row["id"])
                    model = _commit_row(write, row, values, new)
        except BaseException:
            repository.delete_keys(self.s3, layout.bucket, written)
            raise
        log.info(
            "model %s version %s installed as Triton %s version %d (%s)",
            model["name"],
            model["version"],
            tm,
            number,
            prepared.format,
        )
        self.backend_admin.wake(model)
        return model

    def _write_version(self, layout: Layout, tm: str, number: int, prepared: Prepared) -> list[str]:
        written: list[str] = []
        prefix = layout.version_prefix(tm, number)
        try:
            for rel, path in sorted(prepared.version_files.items()):
                if rel in prepared.in_place:
                    continue
                repository.upload_file(self.s3, path, layout.bucket, prefix + rel)
                written.append(prefix + rel)
        except BaseException:
            repository.delete_keys(self.s3, layout.bucket, written)
            raise
        return written

    def _use_config(self, conn: Any, layout: Layout, tm: str, prepared: Prepared, exclude: Any) -> None:
        """The Triton model's shared config: written when it has no live version, else it must match.

        Written again even when it matches (small files): the repository is the agents' source and
        must hold it whatever happened to the bucket since the last push.
        """
        current = conn.execute(sa.select(triton_models).where(triton_models.c.name == tm).with_for_update()).one()
        files = {rel: sha for rel, (_, sha) in prepared.model_files.items()}
        same = current.config == prepared.config and dict(current.files) == files
        live = (
            []
            if same
            else conn.execute(
                sa.select(models.c.version)
                .where(
                    models.c.triton_model == tm,
                    models.c.repository_uri.is_not(None),
                    models.c.state.in_(LIVE_STATES),
                    models.c.id != uuid.UUID(str(exclude)),
                )
                .limit(5)
            ).all()
        )
        if live and current.config is not None:
            from shared.lifecycle.tritonconfig import signature

            differs = "config.pbtxt" if current.config != prepared.config else "model-level files"
            raise Conflict(
                f"every version of Triton model {tm!r} shares one configuration, and this artifact's "
                f"{differs} differ from the one versions {', '.join(r.version for r in live)} use "
                f"(in use: {signature(current.config)}; this one: {signature(prepared.config)}); "
                "push it under another name or triton_model",
                code="config_conflict",
                field="artifact",
            )
        model_prefix = layout.model_prefix(tm)
        for rel, (path, _) in sorted(prepared.model_files.items()):
            repository.upload_file(self.s3, path, layout.bucket, model_prefix + rel)
        stale = [model_prefix + rel for rel in dict(current.files) if rel not in files]
        repository.delete_keys(self.s3, layout.bucket, stale)
        repository.put(self.s3, layout.bucket, model_prefix + packages.CONFIG, prepared.config.encode())
        if not same:
            conn.execute(
                sa.update(triton_models).where(triton_models.c.name == tm).values(config=prepared.config, files=files)
            )

    # -- Triton model ownership and version numbers --------------------------------------------
    def allocate(self, conn: Any, name: str, tm: str) -> int:
        """The next Triton version of ``tm`` (never reused), claiming ``tm`` for ``name`` on first use."""
        current = conn.execute(sa.select(triton_models).where(triton_models.c.name == tm).with_for_update()).first()
        if current is None:
            external = conn.execute(
                sa.select(models.c.name).where(models.c.triton_model == tm, models.c.repository_uri.is_(None)).limit(1)
            ).first()
            layout = Layout.of(self.settings)
            if external is not None or repository.holds_anything(self.s3, layout, tm):
                owner = (
                    f"registered by model {external.name!r}"
                    if external is not None
                    else f"present in {layout.uri(layout.model_prefix(tm))}"
                )
                raise Conflict(
                    f"Triton model {tm!r} is served from files Kinfer does not manage ({owner}); push "
                    "under another name or set triton_model",
                    code="triton_model_unmanaged",
                    field="triton_model",
                )
            conn.execute(
                pg_insert(triton_models)
                .values(name=tm, owner=name, last_version=0)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            current = conn.execute(sa.select(triton_models).where(triton_models.c.name == tm).with_for_update()).one()
        if current.owner != name:
            raise Conflict(
                f"Triton model {tm!r} holds the versions of model {current.owner!r}; push under another "
                "name or set triton_model",
                code="triton_model_taken",
                field="triton_model",
            )
        return int(
            conn.execute(
                sa.update(triton_models)
                .where(triton_models.c.name == tm)
                .values(last_version=triton_models.c.last_version + 1)
                .returning(triton_models.c.last_version)
            ).scalar_one()
        )


def _commit_row(write: registry.Write, row: NewModel | ModelVersion, values: Installed, new: bool) -> ModelVersion:
    if new:
        keep = {k: value for k, value in row.items() if k in models.c}
        return registry.insert(write, {**keep, **values})
    updated = write.conn.execute(
        sa.update(models)
        .where(models.c.id == uuid.UUID(str(row["id"])), models.c.state == ModelState.AWAITING_UPLOAD)
        .values(**values, updated_at=sa.func.clock_timestamp())
        .returning(*models.c)
    ).first()
    if updated is None:
        raise Conflict(
            f"model {row['name']!r} version {row['version']!r} got its artifact from another upload "
            "meanwhile (or was deleted)",
            code="artifact_exists",
        )
    return write.touch(registry.to_json(updated))


# -- helpers (no collaborators) ------------------------------------------------------------------
def triton_version(number: int | None) -> int:
    """The Triton version of a version Kinfer installs (always allocated before)."""
    if number is None:
        raise TypeError("a version Kinfer installs has its Triton version allocated")
    return int(number)


def refuse_duplicate(conn: Any, row: NewModel) -> None:
    found = conn.execute(
        sa.select(models.c.state).where(models.c.name == row["name"], models.c.version == row["version"])
    ).first()
    if found is not None:
        hint = (
            " (it awaits its artifact: PUT the file to /v1/models/{id}/artifact, or DELETE it)"
            if found.state == ModelState.AWAITING_UPLOAD
            else ""
        )
        raise Conflict(registry.duplicate(row["name"], row["version"]) + hint, field="version")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
