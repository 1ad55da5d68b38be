"""The relay's ``/metrics``: what Prometheus scrapes of it (Redis faked: no stream is read for real)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from shared.localstack.relay.server import EventRelay
from tests.unit.localstack.relay.test_wiring import FIXTURES, TARGETS


class _Redis:
    def __init__(self, lengths: dict[str, int], down: bool = False) -> None:
        self.lengths, self.down = lengths, down

    def xlen(self, key: str) -> int:
        if self.down:
            raise RedisConnectionError("down")
        return next((n for topic, n in self.lengths.items() if key.endswith(topic)), 0)

    def xpending(self, key: str, group: str) -> dict[str, Any]:
        return {"pending": 2 if key.endswith("test.batch.chunks") else 0}


def test_relay_metrics_say_whether_redis_answers_and_how_full_each_topic_is() -> None:
    relay = EventRelay(_Redis({"test.batch.chunks": 7}), FIXTURES, TARGETS)
    text = relay.metrics().decode()
    assert "kinfer_relay_up 1\n" in text
    assert 'kinfer_relay_topic_events{topic="test.batch.chunks"} 7\n' in text
    assert 'kinfer_relay_topic_events{topic="test.batch.requests"} 0\n' in text
    assert "kinfer_relay_pending " in text and "# TYPE kinfer_relay_pending gauge" in text
    down = EventRelay(_Redis({}, down=True), FIXTURES, TARGETS).metrics().decode()
    assert "kinfer_relay_up 0\n" in down and "kinfer_relay_topic_events{" not in down
