"""Result objects: the multipart upload logic."""

from __future__ import annotations

import uuid

import pytest

from shared.batch import results as batch_results

JOB = uuid.uuid4()


class FakeS3:
    """Records multipart calls (the merge logic, not S3, is under test here)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.put: bytes | None = None
        self.completed = False

    def create_multipart_upload(self, **kw: object) -> dict:
        return {"UploadId": "u1"}

    def upload_part(self, Body: bytes, PartNumber: int, **kw: object) -> dict:  # noqa: N803
        self.parts.append(Body)
        return {"ETag": f"e{PartNumber}"}

    def complete_multipart_upload(self, MultipartUpload: dict, **kw: object) -> None:  # noqa: N803
        assert [p["PartNumber"] for p in MultipartUpload["Parts"]] == list(range(1, len(self.parts) + 1))
        self.completed = True

    def put_object(self, Body: bytes, **kw: object) -> None:  # noqa: N803
        self.put = Body


def test_upload_small_is_one_put(monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = FakeS3()
    upload = batch_results._Upload(s3, "b", "k")
    upload.write(b"a\n")
    upload.write(b"b\n")
    upload.close()
    assert s3.put == b"a\nb\n" and not s3.parts


def test_upload_large_uses_bounded_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_results, "PART_SIZE", 10)
    s3 = FakeS3()
    upload = batch_results._Upload(s3, "b", "k")
    for _ in range(5):
        upload.write(b"0123456\n")
    upload.close()
    assert s3.completed and b"".join(s3.parts) == b"0123456\n" * 5
    assert all(len(p) < 20 for p in s3.parts)
