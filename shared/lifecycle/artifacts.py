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

Checking: an ONNX file gets a ``config.pbtxt`` written from its graph (``onnxgraph``) and the push
options (``triton_config``, ``options``: stored on the row, so the PUT of an upload uses what the POST
said); a ``.tar.gz`` Triton model directory is unpacked safely (``packages``). Installing (``install``):
the version goes to the Triton model whose live versions share its config (a new one when none does),
its files to ``<prefix>/<triton_model>/<n>/``, the model-level ``config.pbtxt`` is written. The
version then becomes ``pending``: the model agents load it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared import registry
from shared import validation as v
from shared.clients.aio import in_thread
from shared.clients.cache import REDIS_ERRORS
from shared.clients.db import conflict_on
from shared.domain import ModelState, ModelVersion, TritonOptions
from shared.errors import Conflict, InvalidInput, PayloadTooLarge, Unavailable
from shared.lifecycle import onnxgraph, options, packages, repository
from shared.lifecycle.install import Prepared, file_sha256, refuse_duplicate, triton_version
from shared.lifecycle.repository import Layout

if TYPE_CHECKING:
    from collections.abc import Iterator

    from shared.audit import Actor
    from shared.clients.cache import Cache
    from shared.clients.db import Database
    from shared.lifecycle.backends import BackendAdmin
    from shared.lifecycle.install import Installer
    from shared.registry import ModelRegistry
    from shared.registry.rules import NewModel
    from shared.settings import Settings

log = logging.getLogger(__name__)

EXTRA_FIELDS = ("upload", "artifact_uri", "sha256", "triton_config")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
ARTIFACTS = repository.ARTIFACTS

# One upload at a time per version: a second one (a retry, a second client) must not write the same
# objects, or its cleanup would delete the first one's files. A lease in Redis, longer than any upload
# can last (the route's timeout), released by its holder only.
UPLOAD_LEASE_S = 900
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class PendingUpload(ModelVersion):
    """A version registered for upload: where to PUT its file."""

    upload_url: str


class Artifacts:
    """Registering versions from their artifacts: create/update, uploads, s3:// artifacts, checking."""

    def __init__(
        self,
        registry: ModelRegistry,
        installer: Installer,
        db: Database,
        cache: Cache,
        s3: Any,
        settings: Settings,
        backend_admin: BackendAdmin,
    ) -> None:
        self.registry = registry
        self.installer = installer
        self.db = db
        self.cache = cache
        self.s3 = s3
        self.settings = settings
        self.backend_admin = backend_admin

    # -- POST /v1/models ----------------------------------------------------------------------
    def create_model(self, body: object, actor: Actor | None = None) -> ModelVersion:
        """Register a version: plain (files Kinfer does not manage), for upload, or from an s3:// artifact.
        Audited as ``version.register`` (plain, for upload) or ``version.push`` (installed)."""
        body = v.require_object(body)
        row = registry.validate_create(body, EXTRA_FIELDS)
        self.registry.check_backends_allowed(row.get("backend_urls") or [], registry.backend_field(body))
        upload, uri = body.get("upload"), body.get("artifact_uri")
        if upload is None and uri is None:
            if "sha256" in body:
                raise InvalidInput("sha256 goes with artifact_uri (or with the PUT of an upload)", field="sha256")
            if "triton_config" in body:
                raise InvalidInput(
                    "triton_config goes with a pushed file (upload or artifact_uri): Kinfer writes config.pbtxt "
                    "only for the files it installs",
                    field="triton_config",
                )
            warnings = self.backend_admin.check_registration(row)
            model = self.registry.create_model({k: body[k] for k in body if k not in EXTRA_FIELDS}, actor)
            return {**model, "warnings": warnings} if warnings else model
        if "triton_version" in row:
            raise InvalidInput(
                "triton_version is allocated by Kinfer for pushed artifacts; leave it out", field="triton_version"
            )
        if upload is not None and uri is not None:
            raise InvalidInput("give upload or artifact_uri, not both", field="artifact_uri")
        push = options.parse(body.get("triton_config"))
        if push:
            row["triton_config"] = push
        if uri is None:
            if upload is not True:
                raise InvalidInput(
                    "upload must be true (then PUT the file to /v1/models/{id}/artifact)", field="upload"
                )
            return self._create_for_upload(row, actor)
        uri = v.string(uri, "artifact_uri", max_len=1024)
        sha = _sha(body.get("sha256"), "sha256")
        return self._create_from_uri(row, uri, sha, actor)

    # -- PUT/PATCH /v1/models/{id} ------------------------------------------------------------
    def update_model(self, raw_id: str, body: object, actor: Actor | None = None) -> ModelVersion:
        """Update a version; when it moved to other backends or another Triton model, check them as a
        registration does and say what is wrong in ``warnings`` (the update itself stands)."""
        model = self.registry.update_model(raw_id, body, actor)
        if not isinstance(body, dict) or not {"backend_url", "backend_urls", "triton_model"} & body.keys():
            return model
        try:
            warnings = self.backend_admin.check_registration(model)
        except InvalidInput as exc:
            warnings = [exc.message]
        return {**model, "warnings": warnings} if warnings else model

    def _create_for_upload(self, row: NewModel, actor: Actor | None) -> PendingUpload:
        layout = Layout.of(self.settings)
        repository.ensure_bucket(self.s3, layout)
        with conflict_on(registry.duplicate(row["name"], row["version"]), field="version"):
            with self.registry.writing() as write:
                refuse_duplicate(write.conn, row)
                number = self.installer.allocate(write.conn, row["name"], row["triton_model"])
                model = registry.insert(
                    write,
                    dict(
                        row,
                        id=uuid.uuid4(),
                        triton_version=number,
                        state=ModelState.AWAITING_UPLOAD,
                        repository_uri=layout.uri(layout.version_prefix(row["triton_model"], number)),
                    ),
                )
                write.audit(actor, "version.register", registry.version_target(model), None, model)
        return {**model, "upload_url": f"/v1/models/{model['id']}/artifact"}

    def _create_from_uri(self, row: NewModel, uri: str, sha: str | None, actor: Actor | None) -> ModelVersion:
        settings, layout = self.settings, Layout.of(self.settings)
        # The bucket is checked before anything asks S3: the answer must not tell whether an object exists in a
        # bucket the caller may not read (another key's batch inputs or results).
        allowed = settings.artifact_source_buckets or (layout.bucket,)
        if repository.bucket_of(uri, "artifact_uri") not in allowed:
            raise InvalidInput(
                f"artifact_uri must name a bucket of ARTIFACT_SOURCE_BUCKETS ({', '.join(allowed)})",
                field="artifact_uri",
                code="artifact_bucket_not_allowed",
            )
        bucket, key, size = repository.head_size(self.s3, uri, "artifact_uri")
        if size > settings.max_artifact_bytes:
            raise PayloadTooLarge(
                f"the artifact is {size} bytes; the limit is {settings.max_artifact_bytes} bytes (MAX_ARTIFACT_BYTES)"
            )
        with self.db.read() as conn:
            refuse_duplicate(conn, row)
        repository.ensure_bucket(self.s3, layout)
        with workspace() as work:
            local = work / "artifact"
            repository.download(self.s3, bucket, key, local)
            if sha is not None and file_sha256(local) != sha:
                raise InvalidInput(
                    "the artifact's SHA-256 does not match sha256", field="sha256", code="checksum_mismatch"
                )
            with self.db.begin() as conn:
                number = self.installer.allocate(conn, row["name"], row["triton_model"])
            prepared = self.prepare(local, work, row["triton_model"], row.get("triton_config"))
            model_row: NewModel = {**row, "id": uuid.uuid4(), "triton_version": number, "artifact_uri": uri}
            return self.installer.install(model_row, prepared, local, new=True, actor=actor)

    def push_file(self, body: Mapping[str, object], path: Path, actor: Actor | None = None) -> ModelVersion:
        """Register and install a local file in one go (what ``kinfer up`` does with the demo models)."""
        model = self.create_model(dict(body, upload=True), actor)
        layout = Layout.of(self.settings)
        with workspace() as work:
            key = _upload_key(layout, model, gzip=packages.is_gzip(path))
            repository.upload_file(self.s3, path, layout.bucket, key)
            try:
                prepared = self.prepare(path, work, model["triton_model"], model["triton_config"])
                if prepared.format == "onnx":
                    prepared.in_place.add(onnxgraph.MODEL_FILE)
                uploaded: ModelVersion = {**model, "artifact_uri": layout.uri(key)}  # its id is read as str(id)
                return self.installer.install(uploaded, prepared, path, False, actor)
            except BaseException:
                repository.delete_keys(self.s3, layout.bucket, [key])
                self.registry.delete_model(model["id"], actor)
                raise

    # -- PUT /v1/models/{id}/artifact -----------------------------------------------------------
    async def receive_upload(
        self, raw_id: str, chunks: AsyncIterator[bytes], sha256: str | None, actor: Actor | None = None
    ) -> ModelVersion:
        """Stream an upload to S3 (multipart) and to a scratch file, then check and install it."""
        want = _sha(sha256, "sha256")
        model = await in_thread(self.registry.get_model, raw_id)
        _refuse_unless_awaiting(model)
        lease = await in_thread(self._claim_upload, model)
        try:
            model = await in_thread(self.registry.get_model, raw_id)  # the upload before ours may have ended
            _refuse_unless_awaiting(model)
            return await self._receive(model, chunks, want, actor)
        finally:
            await in_thread(self._release_upload, model, lease)

    def _claim_upload(self, model: ModelVersion) -> str:
        token = uuid.uuid4().hex
        try:
            claimed = self.cache.client.set(f"kinfer:upload:{model['id']}", token, nx=True, ex=UPLOAD_LEASE_S)
        except REDIS_ERRORS as exc:
            raise Unavailable(
                "the registry cache (Redis) cannot be reached; retry the upload shortly", retry_after=1
            ) from exc
        if not claimed:
            raise Conflict(
                f"another upload to model {model['name']!r} version {model['version']!r} is in progress; "
                "wait for it to end (GET the model: its state leaves awaiting_upload), or retry if it failed",
                code="upload_in_progress",
            )
        return token

    def _release_upload(self, model: ModelVersion, token: str) -> None:
        try:
            self.cache.client.eval(_RELEASE, 1, f"kinfer:upload:{model['id']}", token)
        except REDIS_ERRORS:
            log.warning("could not release the upload lease of %s; it expires in %d s", model["id"], UPLOAD_LEASE_S)

    async def _receive(
        self, model: ModelVersion, chunks: AsyncIterator[bytes], want: str | None, actor: Actor | None
    ) -> ModelVersion:
        layout = Layout.of(self.settings)
        with workspace() as work:
            local = work / "artifact"
            key, digest = await self._stream(layout, model, chunks, local)
            try:
                if want is not None and digest != want:
                    raise InvalidInput(
                        "the uploaded file's SHA-256 does not match sha256", field="sha256", code="checksum_mismatch"
                    )
                prepared = await in_thread(self.prepare, local, work, model["triton_model"], model["triton_config"])
                if prepared.format == "onnx":
                    prepared.in_place.add(onnxgraph.MODEL_FILE)
                uploaded: ModelVersion = {**model, "artifact_uri": layout.uri(key)}  # its id is read as str(id)
                return await in_thread(self.installer.install, uploaded, prepared, local, False, actor)
            except BaseException:
                await in_thread(repository.delete_keys, self.s3, layout.bucket, [key])
                raise

    async def _stream(
        self, layout: Layout, model: ModelVersion, chunks: AsyncIterator[bytes], local: Path
    ) -> tuple[str, str]:
        """Write the body to S3 part by part (and to ``local``); (key written, sha256)."""
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
                        writer = await in_thread(repository.MultipartWriter, self.s3, layout.bucket, key)
                    if writer is not None and len(buffer) >= repository.PART_BYTES:
                        await in_thread(writer.part, bytes(buffer))
                        buffer.clear()
            if writer is None:
                if not buffer:
                    raise InvalidInput("the upload is empty; send the model file as the request body", field="body")
                key = _upload_key(layout, model, gzip=False)
                writer = await in_thread(repository.MultipartWriter, self.s3, layout.bucket, key)
            if buffer:
                await in_thread(writer.part, bytes(buffer))
            await in_thread(writer.complete)
        except BaseException:
            if writer is not None:
                await in_thread(writer.abort)
            raise
        return key, digest.hexdigest()

    # -- checking --------------------------------------------------------------------------------
    def prepare(self, local: Path, work: Path, triton_model: str, push: TritonOptions | None = None) -> Prepared:
        """Check the artifact at ``local``: a .tar.gz Triton package, else an ONNX file (its config written with
        the push options ``push``)."""
        settings = self.settings
        if packages.is_gzip(local):
            if push:
                raise InvalidInput(
                    "triton_config applies to ONNX files, whose config.pbtxt Kinfer writes; a .tar.gz package "
                    "brings its own (set max_batch_size, dynamic_batching and instance_group there)",
                    field="triton_config",
                )
            package = packages.unpack(local, work / "package", triton_model, settings.max_artifact_bytes)
            version_dir = package.root / package.version_dir
            return Prepared(
                format="triton",
                config=package.config,
                version_files={rel: version_dir / rel for rel in package.version_files},
                model_files={rel: (package.root / rel, sha) for rel, sha in package.model_files.items()},
            )
        graph = onnxgraph.load(local)
        from shared.lifecycle import tritonconfig

        config = tritonconfig.normalise(
            onnxgraph.config_text(graph, triton_model, settings.onnx_backend, settings.onnx_max_batch_size, push),
            triton_model,
        )
        files = {onnxgraph.MODEL_FILE: local}
        if settings.onnx_backend == "python":
            runner = work / onnxgraph.RUNNER_FILE
            runner.write_bytes(onnxgraph.runner_source())
            files[onnxgraph.RUNNER_FILE] = runner
        return Prepared(format="onnx", config=config, version_files=files)


# -- helpers ------------------------------------------------------------------------------------
@contextmanager
def workspace() -> Iterator[Path]:
    """A scratch folder on local disk (artifacts are never held whole in memory), removed after."""
    folder = Path(tempfile.mkdtemp(prefix="kinfer-artifact-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _sha(raw: object, field_name: str) -> str | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or not SHA256.fullmatch(raw):
        raise InvalidInput(f"{field_name} must be 64 hex digits (the artifact's SHA-256)", field=field_name)
    return raw.lower()


def _refuse_unless_awaiting(model: ModelVersion) -> None:
    if model["state"] != ModelState.AWAITING_UPLOAD:
        raise Conflict(
            f"model {model['name']!r} version {model['version']!r} already has its artifact "
            f"(state {model['state']}); register a new version to push another file",
            code="artifact_exists",
        )


def _upload_key(layout: Layout, model: ModelVersion, gzip: bool) -> str:
    """ONNX goes straight to its place in the version folder; a package is kept beside the repository."""
    tm, number = model["triton_model"], triton_version(model["triton_version"])
    if gzip:
        return layout.package_key(tm, number)
    return layout.version_prefix(tm, number) + onnxgraph.MODEL_FILE
