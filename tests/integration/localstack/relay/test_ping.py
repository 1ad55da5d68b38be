"""A local PingSource tick is a CloudEvent the real backends function accepts and acts on."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from shared.localstack.relay.ping import Ping, PingTicker
from tests.conftest import free_port
from tests.integration.servers import serve_function

pytestmark = pytest.mark.integration


def test_tick_probes_the_backends(base_settings: Any, triton: Any) -> None:
    import redis

    settings = dataclasses.replace(base_settings, triton_url=triton.grpc_url)
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(f"kinfer:probe:{triton.grpc_url}")
    with serve_function("backends", "serve_backends", free_port(), settings) as base:
        ping = Ping("backends-probe", "kinfer", 60.0, base + "/", '{"probe": "backends"}', "application/json")
        assert PingTicker([ping]).tick(ping) == 200
    record = json.loads(client.get(f"kinfer:probe:{triton.grpc_url}"))
    assert record["healthy"] is True and record["last_checked"]
