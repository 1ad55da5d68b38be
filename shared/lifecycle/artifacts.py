"""Registering a model version from its artifact: nothing half-registered, the old version untouched.

Two ways in, one install path:

- ``POST /v1/models`` with ``"upload": true`` creates the version in state ``awaiting_upload``
  (its Triton version allocated, nothing served); ``PUT /v1/models/{id}/artifact`` then streams
  the file to S3 by multipart upload (never whole in memory; MAX_ARTIFACT_BYTES -> 413; an
  optional ``sha256`` -> 400 on mismatch), checks it and installs it. A failed or interrupted
  upload leaves the version ``awaiting_upload`` (never served, nothing in the repository; the
  multipart upload is aborted) and the same PUT can be retried.
- ``POST /v1/models`` with ``"artifact_uri": "s3://bucket/key"`` (a bucket of
  ARTIFACT_SOURCE_BUCKETS) installs the object first and inserts the row only when it is in place.

Installing: an ONNX file gets a ``config.pbtxt`` written from its graph (``onnxgraph``); a
``.tar.gz`` Triton model directory is unpacked safely (``packages``). The version's files go to
``<prefix>/<triton_model>/<n>/``; the model-level ``config.pbtxt`` (shared by every version of a
Triton model) is written or, when live versions already use another one, refused with 409. The
version then becomes ``pending``: the model agents load it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared import registry
from shared import validation as v
from shared.clients.db import conflict_on
from shared.clients.schema import models, triton_models
from shared.errors import Conflict, InvalidInput, PayloadTooLarge
from shared.lifecycle import onnxgraph, packages, repository
from shared.lifecycle.repository import Layout

if TYPE_CHECKING:
    from collections.abc import Iterator

    from shared.services import Services

log = logging.getLogger(__name__)

EXTRA_FIELDS = ("upload", "artifact_uri", "sha256")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
LIVE_STATES = ("pending", "loading", "ready")
ARTIFACTS = ".kinfer-artifacts"


@dataclass
class Prepared:
    """A checked artifact, ready to be written into the repository."""

    format: str  # "onnx" | "triton"
    config: str
    version_files: dict[str, Path] = field(default_factory=dict)  # relative to <T>/<n>/
    model_files: dict[str, tuple[Path, str]] = field(default_factory=dict)  # relative to <T>/: (path, sha256)
    in_place: set[str] = field(default_factory=set)  # version files already at their key


# -- POST /v1/models ----------------------------------------------------------------------
def create_model(services: Services, body: Any) -> dict[str, Any]:
    """Register a version: plain (files Kinfer does not manage), for upload, or from an s3:// artifact."""
    body = v.require_object(body)
    row = registry.validate_create(body, EXTRA_FIELDS)
    registry.check_backends_allowed(services, row.get("backend_urls") or [], registry.backend_field(body))
    upload, uri = body.get("upload"), body.get("artifact_uri")
    if upload is None and uri is None:
        if "sha256" in body:
            raise InvalidInput("sha256 goes with artifact_uri (or with the PUT of an upload)", field="sha256")
        from shared.lifecycle.backends import check_registration

        warnings = check_registration(services, row)
        model = registry.create_model(services, {k: body[k] for k in body if k not in EXTRA_FIELDS})
        return dict(model, warnings=warnings) if warnings else model
    if "triton_version" in row:
        raise InvalidInput("triton_version is allocated by Kinfer for pushed artifacts; leave it out",
                           field="triton_version")
    if upload is not None and uri is not None:
        raise InvalidInput("give upload or artifact_uri, not both", field="artifact_uri")
    if uri is None:
        if upload is not True:
            raise InvalidInput("upload must be true (then PUT the file to /v1/models/{id}/artifact)", field="upload")
        return _create_for_upload(services, row)
    uri = v.string(uri, "artifact_uri", max_len=1024)
    sha = _sha(body.get("sha256"), "sha256")
    return _create_from_uri(services, row, uri, sha)


def _sha(raw: Any, field_name: str) -> str | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or not SHA256.fullmatch(raw):
        raise InvalidInput(f"{field_name} must be 64 hex digits (the artifact's SHA-256)", field=field_name)
    return raw.lower()


def _create_for_upload(services: Services, row: dict[str, Any]) -> dict[str, Any]:
    layout = Layout.of(services.settings)
    repository.ensure_bucket(services.s3, layout)
    with conflict_on(registry.duplicate(row["name"], row["version"]), field="version"):
        with services.db.begin() as conn:
            _refuse_duplicate(conn, row)
            number = _allocate(services, conn, row["name"], row["triton_model"])
            model = registry.insert(services, conn, dict(
                row, id=uuid.uuid4(), triton_version=number, state="awaiting_upload",
                repository_uri=layout.uri(layout.version_prefix(row["triton_model"], number))))
    registry.invalidate(services, model, names=True)
    return dict(model, upload_url=f"/v1/models/{model['id']}/artifact")


def _create_from_uri(services: Services, row: dict[str, Any], uri: str, sha: str | None) -> dict[str, Any]:
    settings, layout = services.settings, Layout.of(services.settings)
    bucket, key, size = repository.head_size(services.s3, uri, "artifact_uri")
    allowed = settings.artifact_source_buckets or (layout.bucket,)
    if bucket not in allowed:
        raise InvalidInput(f"artifact_uri must name a bucket of ARTIFACT_SOURCE_BUCKETS ({', '.join(allowed)})",
                           field="artifact_uri", code="artifact_bucket_not_allowed")
    if size > settings.max_artifact_bytes:
        raise PayloadTooLarge(f"the artifact is {size} bytes; the limit is {settings.max_artifact_bytes} bytes "
                              "(MAX_ARTIFACT_BYTES)")
    with services.db.read() as conn:
        _refuse_duplicate(conn, row)
    repository.ensure_bucket(services.s3, layout)
    with workspace() as work:
        local = work / "artifact"
        repository.download(services.s3, bucket, key, local)
        if sha is not None and _file_sha256(local) != sha:
            raise InvalidInput("the artifact's SHA-256 does not match sha256", field="sha256",
                               code="checksum_mismatch")
        with services.db.begin() as conn:
            number = _allocate(services, conn, row["name"], row["triton_model"])
        prepared = prepare(services, local, work, row["triton_model"])
        model_row = dict(row, id=uuid.uuid4(), triton_version=number, artifact_uri=uri)
        return install(services, model_row, prepared, local, new=True)


def push_file(services: Services, body: dict[str, Any], path: Path) -> dict[str, Any]:
    """Register and install a local file in one go (what ``kinfer up`` does with the demo models)."""
    model = create_model(services, dict(body, upload=True))
    layout = Layout.of(services.settings)
    with workspace() as work:
        key = _upload_key(layout, model, gzip=packages.is_gzip(path))
        repository.upload_file(services.s3, path, layout.bucket, key)
        try:
            prepared = prepare(services, path, work, model["triton_model"])
            if prepared.format == "onnx":
                prepared.in_place.add(onnxgraph.MODEL_FILE)
            row = {"id": uuid.UUID(model["id"]), "artifact_uri": layout.uri(key)}
            return install(services, dict(model, **row), prepared, path, False)
        except BaseException:
            repository.delete_keys(services.s3, layout.bucket, [key])
            registry.delete_model(services, model["id"])
            raise


# -- PUT /v1/models/{id}/artifact -----------------------------------------------------------
async def receive_upload(services: Services, raw_id: str, chunks: AsyncIterator[bytes],
                         sha256: str | None) -> dict[str, Any]:
    """Stream an upload to S3 (multipart) and to a scratch file, then check and install it."""
    from starlette.concurrency import run_in_threadpool

    want = _sha(sha256, "sha256")
    model = await run_in_threadpool(registry.get_model, services, raw_id)
    if model["state"] != "awaiting_upload":
        raise Conflict(f"model {model['name']!r} version {model['version']!r} already has its artifact "
                       f"(state {model['state']}); register a new version to push another file",
                       code="artifact_exists")
    layout = Layout.of(services.settings)
    with workspace() as work:
        local = work / "artifact"
        key, digest = await _stream(services, layout, model, chunks, local)
        try:
            if want is not None and digest != want:
                raise InvalidInput("the uploaded file's SHA-256 does not match sha256", field="sha256",
                                   code="checksum_mismatch")
            prepared = await run_in_threadpool(prepare, services, local, work, model["triton_model"])
            if prepared.format == "onnx":
                prepared.in_place.add(onnxgraph.MODEL_FILE)
            row = {"id": uuid.UUID(model["id"]), "artifact_uri": layout.uri(key)}
            return await run_in_threadpool(install, services, dict(model, **row), prepared, local, False)
        except BaseException:
            await run_in_threadpool(repository.delete_keys, services.s3, layout.bucket, [key])
            raise


async def _stream(services: Services, layout: Layout, model: dict[str, Any], chunks: AsyncIterator[bytes],
                  local: Path) -> tuple[str, str]:
    """Write the body to S3 part by part (and to ``local``); (key written, sha256)."""
    from starlette.concurrency import run_in_threadpool

    digest, buffer, writer = hashlib.sha256(), bytearray(), None
    key = ""
    try:
        with open(local, "wb") as scratch:
            async for chunk in chunks:
                digest.update(chunk)
                scratch.write(chunk)
                buffer += chunk
                if writer is None and len(buffer) >= 2:
                    key = _upload_key(layout, model, gzip=bytes(buffer[:2]) == b"\x1f\x8b")
                    writer = await run_in_threadpool(repository.MultipartWriter, services.s3, layout.bucket, key)
                if writer is not None and len(buffer) >= repository.PART_BYTES:
                    await run_in_threadpool(writer.part, bytes(buffer))
                    buffer.clear()
        if writer is None:
            if not buffer:
                raise InvalidInput("the upload is empty; send the model file as the request body", field="body")
            key = _upload_key(layout, model, gzip=False)
            writer = await run_in_threadpool(repository.MultipartWriter, services.s3, layout.bucket, key)
        if buffer:
            await run_in_threadpool(writer.part, bytes(buffer))
        await run_in_threadpool(writer.complete)
    except BaseException:
        if writer is not None:
            await run_in_threadpool(writer.abort)
        raise
    return key, digest.hexdigest()


def _upload_key(layout: Layout, model: dict[str, Any], gzip: bool) -> str:
    """ONNX goes straight to its place in the version folder; a package is kept beside the repository."""
    tm, number = model["triton_model"], int(model["triton_version"])
    if gzip:
        prefix = f"{layout.prefix}/" if layout.prefix else ""
        return f"{prefix}{ARTIFACTS}/{tm}/{number}/package.tar.gz"
    return layout.version_prefix(tm, number) + onnxgraph.MODEL_FILE


# -- checking --------------------------------------------------------------------------------
def prepare(services: Services, local: Path, work: Path, triton_model: str) -> Prepared:
    """Check the artifact at ``local``: a .tar.gz Triton package, else an ONNX file."""
    settings = services.settings
    if packages.is_gzip(local):
        package = packages.unpack(local, work / "package", triton_model, settings.max_artifact_bytes)
        version_dir = package.root / package.version_dir
        return Prepared(format="triton", config=package.config,
                        version_files={rel: version_dir / rel for rel in package.version_files},
                        model_files={rel: (package.root / rel, sha) for rel, sha in package.model_files.items()})
    graph = onnxgraph.load(local)
    from shared.lifecycle import tritonconfig

    config = tritonconfig.normalise(onnxgraph.config_text(graph, triton_model, settings.onnx_backend,
                                                          settings.onnx_max_batch_size), triton_model)
    files = {onnxgraph.MODEL_FILE: local}
    if settings.onnx_backend == "python":
        runner = work / onnxgraph.RUNNER_FILE
        runner.write_bytes(onnxgraph.runner_source())
        files[onnxgraph.RUNNER_FILE] = runner
    return Prepared(format="onnx", config=config, version_files=files)


# -- installing ------------------------------------------------------------------------------
def install(services: Services, row: dict[str, Any], prepared: Prepared, local: Path, new: bool) -> dict[str, Any]:
    """Write the version's files, then (one transaction, the Triton model locked) its config and its row.

    ``new``: insert the row (artifact_uri path); else move the awaiting_upload row to pending.
    Whatever fails, the files written for this version are removed again.
    """
    layout = Layout.of(services.settings)
    tm, number = row["triton_model"], int(row["triton_version"])
    written = _write_version(services, layout, tm, number, prepared)
    try:
        values = {"state": "pending", "state_reason": None, "artifact_format": prepared.format,
                  "artifact_sha256": _file_sha256(local), "artifact_bytes": local.stat().st_size,
                  "artifact_uri": row["artifact_uri"], "triton_version": number,
                  "repository_uri": layout.uri(layout.version_prefix(tm, number))}
        with conflict_on(registry.duplicate(row["name"], row["version"]), field="version"):
            with services.db.begin() as conn:
                _use_config(services, conn, layout, tm, prepared, exclude=row["id"])
                model = _commit_row(services, conn, row, values, new)
    except BaseException:
        repository.delete_keys(services.s3, layout.bucket, written)
        raise
    registry.invalidate(services, model, names=new)
    log.info("model %s version %s installed as Triton %s version %d (%s)", model["name"], model["version"], tm,
             number, prepared.format)
    from shared.lifecycle.backends import wake

    wake(services, model)
    return model


def _write_version(services: Services, layout: Layout, tm: str, number: int, prepared: Prepared) -> list[str]:
    written: list[str] = []
    prefix = layout.version_prefix(tm, number)
    try:
        for rel, path in sorted(prepared.version_files.items()):
            if rel in prepared.in_place:
                continue
            repository.upload_file(services.s3, path, layout.bucket, prefix + rel)
            written.append(prefix + rel)
    except BaseException:
        repository.delete_keys(services.s3, layout.bucket, written)
        raise
    return written


def _commit_row(services: Services, conn: Any, row: dict[str, Any], values: dict[str, Any],
                new: bool) -> dict[str, Any]:
    if new:
        keep = {k: row[k] for k in row if k in models.c}
        return registry.insert(services, conn, dict(keep, **values))
    updated = conn.execute(sa.update(models).where(models.c.id == uuid.UUID(str(row["id"])),
                                                   models.c.state == "awaiting_upload")
                           .values(**values, updated_at=sa.func.clock_timestamp()).returning(*models.c)).first()
    if updated is None:
        raise Conflict(f"model {row['name']!r} version {row['version']!r} got its artifact from another upload "
                       "meanwhile (or was deleted)", code="artifact_exists")
    model = registry.to_json(updated)
    registry.invalidate(services, model, before_commit=True)
    return model


def _use_config(services: Services, conn: Any, layout: Layout, tm: str, prepared: Prepared, exclude: Any) -> None:
    """The Triton model's shared config: written when it has no live version, else it must match.

    Written again even when it matches (small files): the repository is the agents' source and
    must hold it whatever happened to the bucket since the last push.
    """
    current = conn.execute(sa.select(triton_models).where(triton_models.c.name == tm).with_for_update()).one()
    files = {rel: sha for rel, (_, sha) in prepared.model_files.items()}
    same = current.config == prepared.config and dict(current.files) == files
    live = [] if same else conn.execute(sa.select(models.c.version).where(
        models.c.triton_model == tm, models.c.repository_uri.is_not(None), models.c.state.in_(LIVE_STATES),
        models.c.id != uuid.UUID(str(exclude))).limit(5)).all()
    if live and current.config is not None:
        from shared.lifecycle.tritonconfig import signature

        differs = "config.pbtxt" if current.config != prepared.config else "model-level files"
        raise Conflict(f"every version of Triton model {tm!r} shares one configuration, and this artifact's "
                       f"{differs} differ from the one versions {', '.join(r.version for r in live)} use "
                       f"(in use: {signature(current.config)}; this one: {signature(prepared.config)}); "
                       "push it under another name or triton_model", code="config_conflict", field="artifact")
    model_prefix = layout.model_prefix(tm)
    for rel, (path, _) in sorted(prepared.model_files.items()):
        repository.upload_file(services.s3, path, layout.bucket, model_prefix + rel)
    stale = [model_prefix + rel for rel in dict(current.files) if rel not in files]
    repository.delete_keys(services.s3, layout.bucket, stale)
    repository.put(services.s3, layout.bucket, model_prefix + packages.CONFIG, prepared.config.encode())
    if not same:
        conn.execute(sa.update(triton_models).where(triton_models.c.name == tm)
                     .values(config=prepared.config, files=files))


# -- Triton model ownership and version numbers ------------------------------------------------
def _refuse_duplicate(conn: Any, row: dict[str, Any]) -> None:
    found = conn.execute(sa.select(models.c.state).where(models.c.name == row["name"],
                                                         models.c.version == row["version"])).first()
    if found is not None:
        hint = (" (it awaits its artifact: PUT the file to /v1/models/{id}/artifact, or DELETE it)"
                if found.state == "awaiting_upload" else "")
        raise Conflict(registry.duplicate(row["name"], row["version"]) + hint, field="version")


def _allocate(services: Services, conn: Any, name: str, tm: str) -> int:
    """The next Triton version of ``tm`` (never reused), claiming ``tm`` for ``name`` on first use."""
    current = conn.execute(sa.select(triton_models).where(triton_models.c.name == tm).with_for_update()).first()
    if current is None:
        external = conn.execute(sa.select(models.c.name).where(models.c.triton_model == tm,
                                                               models.c.repository_uri.is_(None)).limit(1)).first()
        layout = Layout.of(services.settings)
        if external is not None or repository.holds_anything(services.s3, layout, tm):
            owner = f"registered by model {external.name!r}" if external is not None else \
                f"present in {layout.uri(layout.model_prefix(tm))}"
            raise Conflict(f"Triton model {tm!r} is served from files Kinfer does not manage ({owner}); push "
                           "under another name or set triton_model", code="triton_model_unmanaged",
                           field="triton_model")
        conn.execute(pg_insert(triton_models).values(name=tm, owner=name, last_version=0)
                     .on_conflict_do_nothing(index_elements=["name"]))
        current = conn.execute(sa.select(triton_models).where(triton_models.c.name == tm).with_for_update()).one()
    if current.owner != name:
        raise Conflict(f"Triton model {tm!r} holds the versions of model {current.owner!r}; push under another "
                       "name or set triton_model", code="triton_model_taken", field="triton_model")
    return int(conn.execute(sa.update(triton_models).where(triton_models.c.name == tm)
                            .values(last_version=triton_models.c.last_version + 1)
                            .returning(triton_models.c.last_version)).scalar_one())


# -- helpers ------------------------------------------------------------------------------------
@contextmanager
def workspace() -> Iterator[Path]:
    """A scratch folder on local disk (artifacts are never held whole in memory), removed after."""
    folder = Path(tempfile.mkdtemp(prefix="kinfer-artifact-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
