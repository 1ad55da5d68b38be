"""result_url is presigned for S3_PUBLIC_ENDPOINT_URL when set: clients cannot reach the internal host,
and SigV4 binds the host, so rewriting the URL afterwards would break the signature."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from shared import batch_results, storage
from shared.settings import Settings

INTERNAL = "http://minio.kinfer-data.svc.cluster.local:9000"
PUBLIC = "https://s3.kinfer.example.com"


class _Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.s3 = storage.make_s3_client(settings)
        self.made: list[str] = []

    def component(self, name: str, factory: Any) -> Any:
        self.made.append(name)
        return factory(self)


def _presign(environ: dict[str, str]) -> tuple[Any, _Services]:
    services = _Services(Settings.from_env(environ={"S3_ENDPOINT_URL": INTERNAL, **environ}))
    url = batch_results.presigned_results(services, "batch-results/job/results.jsonl")
    return urlsplit(url), services


def test_empty_public_endpoint_presigns_for_the_s3_endpoint() -> None:
    assert Settings.from_env(environ={}).s3_public_endpoint_url == ""
    url, services = _presign({})
    assert f"{url.scheme}://{url.netloc}" == INTERNAL and services.made == []


def test_public_endpoint_is_used_for_result_urls_only() -> None:
    url, services = _presign({"S3_PUBLIC_ENDPOINT_URL": PUBLIC})
    assert f"{url.scheme}://{url.netloc}" == PUBLIC
    assert url.path == "/kinfer-batch-results/batch-results/job/results.jsonl"
    query = parse_qs(url.query)
    assert query["X-Amz-SignedHeaders"] == ["host"] and query["X-Amz-Expires"] == ["3600"]
    assert services.made == ["s3_public"]
    assert services.s3.meta.endpoint_url == INTERNAL  # every other S3 call stays in the cluster
