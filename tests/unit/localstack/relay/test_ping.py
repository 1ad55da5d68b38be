"""Local PingSources: schedules and loading from the real manifests."""

from __future__ import annotations

import pytest

from shared.localstack.relay.ping import interval_of, load_pings
from shared.localstack.relay.wiring import WiringError
from tests.conftest import ROOT


@pytest.mark.parametrize("schedule,seconds", [("* * * * *", 60), ("*/1 * * * *", 60), ("*/5 * * * *", 300)])
def test_minute_step_schedules(schedule: str, seconds: float) -> None:
    assert interval_of(schedule) == seconds


@pytest.mark.parametrize("schedule", ["0 * * * *", "*/0 * * * *", "*/5 1 * * *", "every minute", ""])
def test_other_schedules_are_refused_not_mistimed(schedule: str) -> None:
    with pytest.raises(WiringError):
        interval_of(schedule)


def test_the_real_backends_probe_loads() -> None:
    pings = load_pings(ROOT / "knative" / "base", {"backends": "http://127.0.0.1:8081/"})
    assert [(p.name, p.every_s, p.url) for p in pings] == [("backends-probe", 60.0, "http://127.0.0.1:8081/")]
    assert load_pings(ROOT / "knative" / "base", {}) == [], "a sink that does not run locally is not ticked"
