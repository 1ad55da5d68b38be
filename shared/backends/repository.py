"""Deployment helpers: upload the Triton model repository to the bucket Triton reads.

In production Triton loads its models from MinIO (``--model-repository
s3://...``, see knative/base/services/triton.yaml); ``upload_repository``
copies a local repository there, model by model, so Triton's poll picks it up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.clients.storage import ensure_buckets, translated
from shared.errors import InvalidInput

log = logging.getLogger(__name__)

_SKIPPED_PARTS = {"__pycache__", ".ipynb_checkpoints"}
_SKIPPED_SUFFIXES = {".pyc", ".pyo"}


@dataclass
class UploadReport:
    """What ``upload_repository`` did: the models, the keys written and removed."""

    bucket: str
    prefix: str
    models: list[str] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    bytes: int = 0


def repository_models(repository: Path) -> list[str]:
    """Names of the models in a Triton repository; InvalidInput if it has none or a malformed one."""
    if not repository.is_dir():
        raise InvalidInput(f"model repository not found: {repository}", field="repository")
    models = sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not models:
        raise InvalidInput(f"model repository {repository} holds no model", field="repository")
    for name in models:
        versions = [p for p in (repository / name).iterdir() if p.is_dir() and p.name.isdigit()]
        if not versions:
            raise InvalidInput(f"model {name!r} has no numeric version folder", field="repository")
    return models


def repository_files(repository: Path) -> Iterator[tuple[Path, str]]:
    """Every file of the repository as (path, key relative to the repository), caches skipped."""
    for path in sorted(repository.rglob("*")):
        rel = path.relative_to(repository)
        if not path.is_file() or _SKIPPED_PARTS & set(rel.parts) or path.suffix in _SKIPPED_SUFFIXES:
            continue
        if rel.parts[0].startswith((".", "_")):
            continue
        yield path, rel.as_posix()


def _remote_keys(client: Any, bucket: str, prefix: str) -> set[str]:
    keys: set[str] = set()
    with translated(f"listing of s3://{bucket}/{prefix}"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            keys.update(obj["Key"] for obj in page.get("Contents", []))
    return keys


def upload_repository(
    client: Any, repository: Path, bucket: str, prefix: str = "models", delete_stale: bool = False
) -> UploadReport:
    """Copy ``repository`` to ``s3://bucket/prefix/``; with ``delete_stale``, remove keys no longer present."""
    prefix = prefix.strip("/")
    if not prefix:
        raise InvalidInput("prefix must not be empty", field="prefix")
    report = UploadReport(bucket=bucket, prefix=prefix, models=repository_models(repository))
    ensure_buckets(client, bucket)
    for path, rel in repository_files(repository):
        key = f"{prefix}/{rel}"
        with translated(f"upload of {key}"):
            client.upload_file(str(path), bucket, key)
        report.uploaded.append(key)
        report.bytes += path.stat().st_size
    if delete_stale:
        stale = sorted(_remote_keys(client, bucket, prefix) - set(report.uploaded))
        for key in stale:
            with translated(f"delete of {key}"):
                client.delete_object(Bucket=bucket, Key=key)
        report.deleted = stale
    log.info(
        "uploaded model repository",
        extra={"bucket": bucket, "prefix": prefix, "models": len(report.models), "files": len(report.uploaded)},
    )
    return report
