"""PostgreSQL unreachable: known keys keep inferring, unknown ones get 503, revocation is honoured once it is
back, and the infer function's /health says what is down. (The database becomes unreachable by pointing the
function's engine at a port where nothing listens: a refused connection, as when PostgreSQL is stopped.)"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.access import auth
from shared.clients.cache import Cache
from shared.clients.db import Database
from tests.conftest import free_port, function_client

pytestmark = pytest.mark.integration

ROW = [5.1, 3.5, 1.4, 0.2]
TTL = 0.2


@pytest.fixture
def svc(base_settings: Any, triton: Any) -> Iterator[Any]:
    from shared.services import reset_services

    settings = dataclasses.replace(base_settings, triton_url=triton.grpc_url, auth_required=True, auth_cache_ttl_s=TTL)
    yield reset_services(settings)
    reset_services(None)


def _down(settings: Any, **what: str) -> Any:
    return dataclasses.replace(settings, **{k: v.format(port=free_port()) for k, v in what.items()})


def test_known_keys_keep_working_while_postgresql_is_down(svc: Any, triton: Any) -> None:
    model = svc.registry.create_model(
        {
            "name": f"pg-{uuid.uuid4().hex[:8]}",
            "version": "1",
            "framework": "onnx",
            "format": "onnx",
            "backend_url": triton.grpc_url,
            "triton_model": "iris_classifier",
        },
    )
    record, known = svc.keys.create_key(f"known-{uuid.uuid4().hex[:6]}", "infer")
    _, unseen = svc.keys.create_key(f"unseen-{uuid.uuid4().hex[:6]}", "infer")
    client = function_client("infer", "run_inference")

    def infer(key: str) -> Any:
        return client.post(
            "/v1/infer",
            json={"model": model["name"], "input": {"data": ROW}},
            headers={"Authorization": f"Bearer {key}"},
        )

    assert infer(known).status_code == 200  # the key and the model are now cached
    healthy = client.get("/health").json()
    assert healthy["status"] == "healthy" and healthy["checks"]["database"] == "ok"

    # The domain objects already built hold svc.db itself (constructor injection): point its engines away.
    down = Database(_down(svc.settings, database_url="postgresql+pg8000://postgres@127.0.0.1:{port}/x"))
    real = svc.db.engine, svc.db.read_engine
    svc.db.engine, svc.db.read_engine = down.engine, down.read_engine
    try:
        time.sleep(TTL + 0.05)
        answers = [infer(known) for _ in range(5)]
        assert [r.status_code for r in answers] == [200] * 5 and answers[0].json()["prediction"] == "setosa"
        refused = infer(unseen)
        assert refused.status_code == 503 and refused.json()["code"] == "unavailable"
        assert "key store" in refused.json()["error"] and int(refused.headers["Retry-After"]) >= 1
        health = client.get("/health")
        body = health.json()
        assert health.status_code == 200 and body["status"] == "degraded"
        assert body["checks"] == {"database": "unreachable", "cache": "ok", "triton_circuit": "closed"}
        assert any("PostgreSQL" in e for e in body["effects"])
    finally:
        svc.db.engine, svc.db.read_engine = real

    svc.keys.revoke_key(record["id"])  # revoked during... well, after: honoured once PostgreSQL answers
    deadline = time.monotonic() + auth.OUTAGE_RETRY_S + 5
    while infer(known).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert infer(known).status_code == 401
    assert infer(unseen).status_code == 200


def test_health_is_unhealthy_when_postgresql_and_redis_are_both_down(svc: Any) -> None:
    client = function_client("infer", "run_inference")  # nothing built yet: the health check gets these clients
    svc.__dict__["db"] = Database(_down(svc.settings, database_url="postgresql+pg8000://postgres@127.0.0.1:{port}/x"))
    svc.__dict__["cache"] = Cache(_down(svc.settings, redis_url="redis://127.0.0.1:{port}/0"))
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    assert health.json()["checks"]["cache"] == "unreachable"
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.json()["code"] == "unavailable"
    assert client.get("/v2/health/live").status_code == 200  # liveness never depends on them
