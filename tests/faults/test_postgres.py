"""PostgreSQL stopped under load: the registry and batch API answer JSON 503 with Retry-After (reads
still cached in Redis may answer 200), /health says unhealthy, liveness stays up; after PostgreSQL
is back everything answers again, and no write refused during the outage landed."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.faults.conftest import Load, PrivatePostgres, assert_unavailable_answers, served

pytestmark = pytest.mark.faults


def test_postgres_stopped_under_load_then_started(
    base_settings: Any, private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    from shared.clients import db
    from shared.services import reset_services

    settings = replace(base_settings, database_url=private_postgres.url)
    db.ensure_database(settings)
    db.upgrade(settings)
    services = reset_services(settings)
    name = f"pg-fault-{uuid.uuid4().hex[:8]}"
    model = services.registry.create_model({"name": name, "version": "1", "framework": "onnx", "format": "onnx"})
    reset_services(None)
    with (
        served("models", "manage_models", settings, tmp_path) as (models, _),
        served("batch", "manage_batch_jobs", settings, tmp_path) as (batch, _),
    ):
        targets = [f"{models}/v1/models/{model['id']}", f"{models}/v1/models?name={name}", f"{batch}/v1/batch"]

        def send(session: requests.Session) -> requests.Response:
            turn = int(session.headers.get("x-turn", "0"))
            session.headers["x-turn"] = str(turn + 1)
            return session.get(targets[turn % len(targets)], timeout=10)

        create = {"name": name, "version": "2", "framework": "onnx", "format": "onnx"}
        with Load(send, threads=4, limit_s=60) as load:
            assert load.wait_for(lambda a: a.status == 200, timeout=10) is not None
            private_postgres.stop()
            stopped = time.monotonic()
            time.sleep(1.0)
            refused = requests.post(f"{models}/v1/models", json=create, timeout=10)
            health = requests.get(f"{models}/health", timeout=10)
            livez = requests.get(f"{models}/livez", timeout=10)
            time.sleep(1.5)
            private_postgres.start()
            started = time.monotonic()
            recovered = load.wait_for(lambda a: a.status == 200 and "jobs" in a.body, timeout=30, after=started)
            time.sleep(0.5)
        after = requests.post(f"{models}/v1/models", json=create, timeout=10)
        listed = requests.get(f"{models}/v1/models", params={"name": name}, timeout=10).json()
    answers = load.answers
    assert_unavailable_answers(answers)
    outage = [a for a in answers if stopped + 0.2 <= a.at < started]
    unavailable = sum(1 for a in outage if a.status == 503)
    assert unavailable and all(a.body.get("code") == "unavailable" for a in outage if a.status == 503)
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert health.status_code == 503 and health.json()["checks"]["database"] == "unreachable"
    assert livez.status_code == 200
    assert recovered is not None, load.counts()
    assert after.status_code == 201 and listed["total"] == 2  # the refused create did not land; no duplicate
    assert len(answers) == load.sent
    counts = load.counts()
    print(
        f"\npostgres stop: {load.sent} requests, {counts[200]} x 200, {counts[503]} x 503, 0 other; during the "
        f"outage {unavailable}/{len(outage)} answered 503 (the rest from the Redis cache); health 503, livez 200; "
        f"first batch list 200 {recovered:.2f}s after PostgreSQL started; 2 model rows (refused create absent)"
    )
