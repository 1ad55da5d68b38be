"""GET /v1/backends (the backends function) on real Redis and PostgreSQL: circuit, last probe, and
request rate and median latency over a window, from the counters the infer path writes."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.backends import overview
from shared.endpoints import backend_id
from shared.errors import Unavailable
from shared.services import Services, reset_services
from tests.conftest import free_port, function_client

pytestmark = pytest.mark.integration


@pytest.fixture
def svc(base_settings: Any) -> Iterator[Services]:
    # TRITON_URL where nothing listens: probes fail at once (connection refused), no Triton needed.
    settings = dataclasses.replace(
        base_settings, triton_url=f"127.0.0.1:{free_port()}", auth_required=True, auth_cache_ttl_s=0, breaker_fail_max=2
    )
    services = reset_services(settings)
    client = services.cache.client
    client.delete(overview.SNAPSHOTS_KEY, overview.SNAPSHOT_LOCK_KEY)
    yield services
    client.delete(overview.SNAPSHOTS_KEY, overview.SNAPSHOT_LOCK_KEY)
    reset_services(None)


@pytest.fixture
def client(svc: Services) -> Any:
    return function_client("backends", "serve_backends")


def _key(services: Services, scopes: str) -> dict[str, str]:
    _, secret = services.keys.create_key(f"be-{uuid.uuid4().hex[:8]}", scopes)
    return {"Authorization": f"Bearer {secret}"}


def _row(body: dict[str, Any], url: str) -> dict[str, Any]:
    rows = {b["url"]: b for b in body["backends"]}
    assert url in rows, sorted(rows)
    return rows[url]


def test_rate_and_median_come_from_the_counters_over_the_window(client: Any, svc: Services) -> None:
    url = backend_id(svc.settings.triton_url)
    auth = _key(svc, "admin")  # admin keys see backend addresses
    first = client.get("/v1/backends", headers=auth)
    assert first.status_code == 200, first.text
    row = _row(first.json(), url)
    assert first.json()["window_s"] is None and row["requests_per_s"] is None and row["p50_ms"] is None
    assert row["circuit"] == "closed" and row["healthy"] is False and row["last_probe"]  # probed now: refused
    time.sleep(1.1)  # a snapshot is a baseline once it is MIN_SPAN_S old
    for _ in range(10):  # what the infer path records: 10 requests of 4 ms, in the 2.5-5 ms bucket
        svc.recorder.record(url, "ok", 0.004)
    svc.recorder.flush()
    svc.cache.client.delete(overview.SNAPSHOT_LOCK_KEY)  # the next read may keep a snapshot at once
    second = client.get("/v1/backends?window_s=60", headers=auth)
    body = second.json()
    row = _row(body, url)
    assert body["window_s"] is not None and body["window_s"] > 0
    assert row["requests_per_s"] == pytest.approx(10 / body["window_s"], rel=0.05)
    assert row["p50_ms"] == pytest.approx(3.75)  # the middle of 2.5-5 ms, interpolated
    assert row["requests"]["ok"] >= 10
    third = client.get("/v1/backends", headers=auth).json()  # still from the oldest snapshot in the window
    assert third["window_s"] >= body["window_s"] and _row(third, url)["p50_ms"] == pytest.approx(3.75)
    assert _row(third, url)["requests_per_s"] <= row["requests_per_s"]
    old = json.dumps({"t": time.time() - 3600, "requests": {}, "latency": {}})
    svc.cache.client.rpush(overview.SNAPSHOTS_KEY, old)  # an hour old: outside a 60 s window
    fourth = client.get("/v1/backends?window_s=60", headers=auth).json()
    assert fourth["window_s"] < 60, "a snapshot inside the window is preferred to an older one"
    svc.cache.client.delete(overview.SNAPSHOTS_KEY)
    svc.cache.client.rpush(overview.SNAPSHOTS_KEY, old)
    fifth = client.get("/v1/backends?window_s=60", headers=auth).json()  # nobody watched for an hour
    assert fifth["window_s"] == pytest.approx(3600, abs=5) and _row(fifth, url)["requests"]["ok"] >= 10


def test_an_open_circuit_and_registered_backends_are_listed(client: Any, svc: Services) -> None:
    dead = f"127.0.0.1:{free_port()}"
    model = svc.registry.create_model(
        {
            "name": f"ov-{uuid.uuid4().hex[:8]}",
            "version": "1",
            "framework": "onnx",
            "format": "onnx",
            "backend_url": dead,
            "triton_model": "iris_classifier",
        },
    )
    try:
        for _ in range(svc.settings.breaker_fail_max):
            svc.breakers.record_failure(dead, Unavailable("refused"))
        row = _row(client.get("/v1/backends", headers=_key(svc, "admin")).json(), dead)
        assert row["circuit"] == "open" and row["failures"] >= svc.settings.breaker_fail_max
        assert row["models"] == ["iris_classifier"] and row["healthy"] is False and row["reason"]
        seen = client.get("/v1/backends", headers=_key(svc, "infer")).json()["backends"]
        assert dead not in str(seen) and all(b["url"].startswith("backend-") and b["reason"] is None for b in seen)
        assert any(b["circuit"] == "open" and b["models"] == ["iris_classifier"] for b in seen), "the rest stays"
    finally:
        svc.breakers.reset(dead)
        svc.registry.delete_model(model["id"])


def test_the_overview_needs_an_infer_key_and_checks_its_window(client: Any, svc: Services) -> None:
    assert client.get("/v1/backends").status_code == 401
    refused = client.get("/v1/backends", headers=_key(svc, "batch"))
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    for bad in ("5", "601", "x", "1e3"):
        resp = client.get(f"/v1/backends?window_s={bad}", headers=_key(svc, "admin"))
        assert resp.status_code == 400 and resp.json()["field"] == "window_s", bad
    assert client.get("/v1/backends?window=60", headers=_key(svc, "infer")).status_code == 400


def test_median_of_a_histogram() -> None:
    assert overview.median_ms([]) is None and overview.median_ms([0.0] * 14) is None
    assert overview.median_ms([4.0] + [0.0] * 13) == pytest.approx(0.5)  # 0-1 ms bucket, halfway
    assert overview.median_ms([0.0] * 13 + [3.0]) == pytest.approx(10_000)  # +Inf: the top bound
    assert overview.median_ms([1.0, 0.0, 0.0, 3.0] + [0.0] * 10) == pytest.approx(5 + 5 * 1 / 3, rel=1e-3)
