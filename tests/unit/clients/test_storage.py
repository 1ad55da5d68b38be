"""S3 client rules. result_url is presigned for S3_PUBLIC_ENDPOINT_URL when set: clients cannot reach the internal host,
and SigV4 binds the host, so rewriting the URL afterwards would break the signature."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.services import Services
from shared.settings import Settings

INTERNAL = "http://minio.kinfer-data.svc.cluster.local:9000"
PUBLIC = "https://s3.kinfer.example.com"


def _presign(environ: dict[str, str]) -> tuple[Any, Services]:
    services = Services(Settings.from_env(environ={"S3_ENDPOINT_URL": INTERNAL, **environ}))
    url = services.results.presigned_results("batch-results/job/results.jsonl")
    return urlsplit(url), services


def test_empty_public_endpoint_presigns_for_the_s3_endpoint() -> None:
    assert Settings.from_env(environ={}).s3_public_endpoint_url == ""
    url, services = _presign({})
    assert f"{url.scheme}://{url.netloc}" == INTERNAL and services.s3_presigner is services.s3


def test_public_endpoint_is_used_for_result_urls_only() -> None:
    url, services = _presign({"S3_PUBLIC_ENDPOINT_URL": PUBLIC})
    assert f"{url.scheme}://{url.netloc}" == PUBLIC
    assert url.path == "/kinfer-batch-results/batch-results/job/results.jsonl"
    query = parse_qs(url.query)
    assert query["X-Amz-SignedHeaders"] == ["host"] and query["X-Amz-Expires"] == ["3600"]
    assert services.s3_presigner is not services.s3
    assert services.s3.meta.endpoint_url == INTERNAL  # every other S3 call stays in the cluster


def test_ambient_s3_credentials_pass_no_static_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    from shared.clients.storage import make_s3_client
    from shared.settings import Settings

    seen: list[dict[str, object]] = []
    monkeypatch.setattr(boto3.session.Session, "client", lambda self, *a, **kw: seen.append(kw))
    make_s3_client(Settings.from_env(environ={}))
    make_s3_client(Settings.from_env(environ={"S3_CREDENTIALS": "ambient"}))
    assert seen[0]["aws_access_key_id"] == "kinfer"
    assert "aws_access_key_id" not in seen[1] and "aws_secret_access_key" not in seen[1]
