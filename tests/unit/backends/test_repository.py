"""Unit tests of the model repository upload (shared.backends.repository) with a fake S3 client."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from shared.backends.repository import repository_files, repository_models, upload_repository
from shared.cli import build_parser
from shared.errors import InvalidInput, Unavailable
from tests.conftest import ROOT


class FakeS3:
    """Just the boto3 S3 calls upload_repository makes, backed by dicts."""

    def __init__(self, buckets: dict[str, dict[str, bytes]] | None = None, fail_upload: bool = False) -> None:
        self.buckets = buckets if buckets is not None else {}
        self.fail_upload = fail_upload

    def head_bucket(self, Bucket: str) -> dict:
        if Bucket not in self.buckets:
            raise ClientError({"Error": {"Code": "404"}}, "HeadBucket")
        return {}

    def create_bucket(self, Bucket: str) -> dict:
        self.buckets.setdefault(Bucket, {})
        return {}

    def upload_file(self, filename: str, bucket: str, key: str) -> None:
        if self.fail_upload:
            raise ClientError({"Error": {"Code": "ServiceUnavailable"}}, "PutObject")
        self.buckets[bucket][key] = Path(filename).read_bytes()

    def get_paginator(self, name: str) -> FakeS3:
        assert name == "list_objects_v2"
        return self

    def paginate(self, Bucket: str, Prefix: str) -> list[dict]:
        keys = [k for k in sorted(self.buckets[Bucket]) if k.startswith(Prefix)]
        return [{"Contents": [{"Key": k} for k in keys]}] if keys else [{}]

    def delete_object(self, Bucket: str, Key: str) -> None:
        del self.buckets[Bucket][Key]


def make_repository(root: Path) -> Path:
    repo = root / "repo"
    (repo / "iris_classifier" / "1").mkdir(parents=True)
    (repo / "iris_classifier" / "config.pbtxt").write_text('name: "iris_classifier"\n')
    (repo / "iris_classifier" / "1" / "model.onnx").write_bytes(b"\x08\x07onnx")
    (repo / "vector_scorer" / "1" / "__pycache__").mkdir(parents=True)
    (repo / "vector_scorer" / "1" / "model.py").write_text("class TritonPythonModel: ...\n")
    (repo / "vector_scorer" / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"junk")
    (repo / "vector_scorer" / "config.pbtxt").write_text('backend: "python"\n')
    return repo


def test_upload_copies_every_model_file_under_the_prefix(tmp_path: Path) -> None:
    s3 = FakeS3()
    report = upload_repository(s3, make_repository(tmp_path), "triton-models", "models")
    assert report.models == ["iris_classifier", "vector_scorer"]
    assert sorted(s3.buckets["triton-models"]) == [
        "models/iris_classifier/1/model.onnx",
        "models/iris_classifier/config.pbtxt",
        "models/vector_scorer/1/model.py",
        "models/vector_scorer/config.pbtxt",
    ]
    assert s3.buckets["triton-models"]["models/iris_classifier/1/model.onnx"] == b"\x08\x07onnx"
    assert report.bytes == sum(len(v) for v in s3.buckets["triton-models"].values())


def test_upload_keeps_stale_objects_unless_asked_to_delete_them(tmp_path: Path) -> None:
    s3 = FakeS3({"triton-models": {"models/old_model/1/model.onnx": b"x", "other/keep.txt": b"y"}})
    repo = make_repository(tmp_path)
    upload_repository(s3, repo, "triton-models", "/models/")
    assert "models/old_model/1/model.onnx" in s3.buckets["triton-models"]
    report = upload_repository(s3, repo, "triton-models", "models", delete_stale=True)
    assert report.deleted == ["models/old_model/1/model.onnx"]
    assert "models/old_model/1/model.onnx" not in s3.buckets["triton-models"]
    assert s3.buckets["triton-models"]["other/keep.txt"] == b"y"


def test_repository_without_versions_or_models_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not found"):
        repository_models(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="no model"):
        repository_models(tmp_path / "empty")
    (tmp_path / "bad" / "m").mkdir(parents=True)
    (tmp_path / "bad" / "m" / "config.pbtxt").write_text("")
    with pytest.raises(InvalidInput, match="numeric version"):
        upload_repository(FakeS3(), tmp_path / "bad", "b")


def test_storage_errors_are_translated(tmp_path: Path) -> None:
    with pytest.raises(Unavailable):
        upload_repository(FakeS3(fail_upload=True), make_repository(tmp_path), "b")


def test_cache_files_are_not_uploaded(tmp_path: Path) -> None:
    keys = [key for _, key in repository_files(make_repository(tmp_path))]
    assert not [k for k in keys if "__pycache__" in k or k.endswith(".pyc")]


def test_cli_parses_upload_models_with_defaults() -> None:
    args = build_parser().parse_args(["deploy", "upload-models"])
    assert (str(args.repository), args.bucket, args.prefix, args.delete_stale) == (
        "models/production",
        "triton-models",
        "models",
        False,
    )
    assert callable(args.func)


def test_production_repository_is_uploadable() -> None:
    """The repository the image's Triton serves has well-formed models (another engineer builds it)."""
    root = ROOT / "models" / "production"
    models = repository_models(root)
    assert "iris_classifier" in models
    assert (root / "iris_classifier" / "1" / "model.onnx").is_file()
