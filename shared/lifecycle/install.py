"""Installing a checked artifact: its files into the model repository, then its row, as one step.

First the version is placed: Triton reads one ``config.pbtxt`` per Triton model, shared by all its
versions, so a version whose config (inputs, outputs, batching, instances: the push options included)
is the one of its Triton model's live versions joins it as its next Triton version; one whose config
differs goes to another Triton model of the same name with that config, or to a new one,
``<triton_model>.v<version>`` (its Triton versions count from 1). A new version may thus change the
model's inputs and outputs: the aliases (``aliases``) keep callers from being switched to it unasked.
Then the version's own files go in (``<prefix>/<triton_model>/<n>/``); then, in one transaction
holding the Triton model's row (``triton_models``), its ``config.pbtxt`` is written or checked, and
the version's row is inserted or moved to ``pending`` (with the Triton model and version it was
placed in). Whatever fails, the files written for the version are removed again: nothing is
half-registered. This module also hands out Triton versions (never reused) and keeps each Triton
model to the registry name that first pushed to it.
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
from shared.lifecycle import packages, repository, tritonconfig
from shared.lifecycle.repository import Layout

if TYPE_CHECKING:
    from shared.audit import Actor
    from shared.domain import ModelVersion
    from shared.lifecycle.backends import BackendAdmin
    from shared.registry import ModelRegistry
    from shared.registry.rules import NewModel
    from shared.settings import Settings

log = logging.getLogger(__name__)

LIVE_STATES = (ModelState.PENDING, ModelState.LOADING, ModelState.READY)
MAX_TRITON_MODEL = 128  # characters, as a registry name


class Installed(TypedDict):
    """The columns an install writes into the version's row."""

    triton_model: str
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

    def install(
        self, row: NewModel | ModelVersion, prepared: Prepared, local: Path, new: bool, actor: Actor | None = None
    ) -> ModelVersion:
        """Place the version, write its files, then (one transaction, the Triton model locked) its config and row.

        ``new``: insert the row (a ``NewModel``, artifact_uri path); else move the awaiting_upload row (a
        ``ModelVersion``) to pending. Whatever fails, the files written for this version are removed again.
        The same transaction appends the ``version.push`` audit entry of ``actor``.
        """
        layout = Layout.of(self.settings)
        tm, number = self._place(row, prepared)
        if tm != row["triton_model"]:
            prepared.config = tritonconfig.renamed(prepared.config, tm)
        written, moved = self._write_version(layout, row, tm, number, prepared)
        try:
            values: Installed = {
                "triton_model": tm,
                "state": ModelState.PENDING,
                "state_reason": None,
                "artifact_format": prepared.format,
                "artifact_sha256": file_sha256(local),
                "artifact_bytes": local.stat().st_size,
                "artifact_uri": moved.get(row["artifact_uri"] or "", row["artifact_uri"]),
                "triton_version": number,
                "repository_uri": layout.uri(layout.version_prefix(tm, number)),
            }
            with conflict_on(registry.duplicate(row["name"], row["version"]), field="version"):
                with self.registry.writing() as write:
                    self._use_config(write.conn, layout, tm, prepared, exclude=row["id"])
                    model = _commit_row(write, row, values, new)
                    write.audit(actor, "version.push", registry.version_target(model), None if new else row, model)
        except BaseException:
            repository.delete_keys(self.s3, layout.bucket, written)
            raise
        if moved:  # the upload's own copy, now that the version's is in place
            repository.delete_keys(self.s3, layout.bucket, [layout.key_of(uri) for uri in moved])
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

    def _place(self, row: NewModel | ModelVersion, prepared: Prepared) -> tuple[str, int]:
        """The Triton model and version the artifact goes to: the row's own when the config fits it, else a
        Triton model of the same name with this very config, else a new one (``<triton_model>.v<version>``)."""
        tm, number = row["triton_model"], triton_version(row["triton_version"])
        files = {rel: sha for rel, (_, sha) in prepared.model_files.items()}
        with self.registry.writing() as write:
            conn = write.conn
            if self._fits(conn, tm, prepared, row["id"]):
                return tm, number
            owned = conn.execute(
                sa.select(triton_models)
                .where(triton_models.c.owner == row["name"], triton_models.c.name != tm)
                .order_by(triton_models.c.name)
            ).all()
            for other in owned:
                config = tritonconfig.renamed(prepared.config, other.name)
                if other.config == config and dict(other.files) == files:
                    return other.name, self.allocate(conn, row["name"], other.name)
            variant = self._variant(conn, row, prepared)
            log.info(
                "model %s version %s has a config of its own: Triton model %s", row["name"], row["version"], variant
            )
            return variant, self.allocate(conn, row["name"], variant)

    def _fits(self, conn: Any, tm: str, prepared: Prepared, exclude: Any) -> bool:
        """Whether the version can go to Triton model ``tm``: its config is ``tm``'s, or ``tm`` has none
        yet or no live version (its config is then replaced)."""
        current = conn.execute(sa.select(triton_models).where(triton_models.c.name == tm)).first()
        if current is None or current.config is None:
            return True
        files = {rel: sha for rel, (_, sha) in prepared.model_files.items()}
        config = tritonconfig.renamed(prepared.config, tm)
        return (current.config == config and dict(current.files) == files) or not _live(conn, tm, exclude)

    def _variant(self, conn: Any, row: NewModel | ModelVersion, prepared: Prepared) -> str:
        """A Triton model for a version whose config is new to its name: ``<triton_model>.v<version>``, or that
        with a random suffix when the name is taken (by another model, by files Kinfer does not manage)."""
        suffix = f".v{row['version']}"
        base = row["triton_model"][: MAX_TRITON_MODEL - len(suffix) - 7] + suffix
        candidates = [f"{row['triton_model'][: MAX_TRITON_MODEL - len(suffix)]}{suffix}"]
        candidates += [f"{base}-{uuid.uuid4().hex[:6]}" for _ in range(3)]
        for name in candidates:
            taken = conn.execute(sa.select(triton_models.c.owner).where(triton_models.c.name == name)).first()
            if taken is not None:
                if taken.owner == row["name"] and self._fits(conn, name, prepared, row["id"]):
                    return name
                continue
            external = conn.execute(
                sa.select(models.c.id).where(models.c.triton_model == name, models.c.repository_uri.is_(None)).limit(1)
            ).first()
            if external is None and not repository.holds_anything(self.s3, Layout.of(self.settings), name):
                return name
        raise Conflict(
            f"no free Triton model name for model {row['name']!r} version {row['version']!r} "
            f"({candidates[0]!r} is taken); push it with another triton_model",
            code="triton_model_taken",
            field="triton_model",
        )

    def _write_version(
        self, layout: Layout, row: NewModel | ModelVersion, tm: str, number: int, prepared: Prepared
    ) -> tuple[list[str], dict[str, str]]:
        """Write the version's files; (keys written, {uri of an uploaded file: its new uri}).

        When the version was placed in another Triton model than the one its row was registered with, the
        upload is copied to its new place: files already in place (an ONNX upload streams to its version
        folder) and a kept package (``Layout.package_key``), so deleting the version finds them."""
        written: list[str] = []
        moved: dict[str, str] = {}
        prefix = layout.version_prefix(tm, number)
        registered = layout.version_prefix(row["triton_model"], triton_version(row["triton_version"]))
        try:
            for rel, path in sorted(prepared.version_files.items()):
                if rel in prepared.in_place:
                    if registered == prefix:
                        continue
                    repository.copy(self.s3, (layout.bucket, registered + rel), layout.bucket, prefix + rel)
                    moved[layout.uri(registered + rel)] = layout.uri(prefix + rel)
                else:
                    repository.upload_file(self.s3, path, layout.bucket, prefix + rel)
                written.append(prefix + rel)
            kept = layout.package_key(row["triton_model"], triton_version(row["triton_version"]))
            if registered != prefix and row["artifact_uri"] == layout.uri(kept):  # an uploaded package goes along
                repository.copy(self.s3, (layout.bucket, kept), layout.bucket, layout.package_key(tm, number))
                written.append(layout.package_key(tm, number))
                moved[layout.uri(kept)] = layout.uri(layout.package_key(tm, number))
        except BaseException:
            repository.delete_keys(self.s3, layout.bucket, written)
            raise
        return written, moved

    def _use_config(self, conn: Any, layout: Layout, tm: str, prepared: Prepared, exclude: Any) -> None:
        """The Triton model's config: written when it has no live version, else it must match (``_place``
        chose a Triton model where it does: a mismatch here means another push changed it meanwhile).

        Written again even when it matches (small files): the repository is the agents' source and
        must hold it whatever happened to the bucket since the last push.
        """
        current = conn.execute(sa.select(triton_models).where(triton_models.c.name == tm).with_for_update()).one()
        files = {rel: sha for rel, (_, sha) in prepared.model_files.items()}
        same = current.config == prepared.config and dict(current.files) == files
        live = [] if same else _live(conn, tm, exclude)
        if live and current.config is not None:
            differs = "config.pbtxt" if current.config != prepared.config else "model-level files"
            raise Conflict(
                f"meanwhile another push gave Triton model {tm!r} a different {differs} (used by versions "
                f"{', '.join(live)}: {tritonconfig.signature(current.config)}; this one: "
                f"{tritonconfig.signature(prepared.config)}); push again",
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
def _live(conn: Any, tm: str, exclude: Any) -> list[str]:
    """Versions (at most 5) whose files Triton model ``tm`` serves or is loading, but ``exclude`` (an id)."""
    rows = conn.execute(
        sa.select(models.c.version)
        .where(
            models.c.triton_model == tm,
            models.c.repository_uri.is_not(None),
            models.c.state.in_(LIVE_STATES),
            models.c.id != uuid.UUID(str(exclude)),
        )
        .limit(5)
    ).all()
    return [r.version for r in rows]


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
