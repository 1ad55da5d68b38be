"""A backend that scales to zero and is waking reaches ``GET /v1/backends`` as waking, with its estimate (the
console shows it as waking, not as down)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest

from shared.backends.monitor import ProbeResult
from shared.backends.overview import BackendOverview, redacted
from shared.localstack.activator import ActivatorStatus, probe_record
from tests.unit.backends.test_monitor import TRITON, _Pool, monitor


def _status(state: str, last_wake_s: float | None) -> ActivatorStatus:
    return cast(
        ActivatorStatus,
        {
            "state": state,
            "since": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).isoformat(),
            "connections": 0,
            "held": 2,
            "wakes": 1 if last_wake_s else 0,
            "last_wake_s": last_wake_s,
            "timeouts": 0,
            "idle_s": 60,
            "hold_s": 120,
            "error": "",
            "pids": {"triton": None, "agent": None},
        },
    )


def test_a_waking_record_carries_its_state_since_and_the_last_wake_as_estimate() -> None:
    record = probe_record(TRITON, _status("waking", 12.5))
    assert record["healthy"] is False and record["state"] == "waking"
    assert record["wake_estimate_s"] == 12.5 and record["state_since"] == "2026-01-02T03:04:05+00:00"
    assert str(record["reason"]).endswith("the last wake took 12.5 s"), record["reason"]
    first = probe_record(TRITON, _status("waking", None))
    assert first["wake_estimate_s"] is None and "last wake" not in str(first["reason"])


@pytest.mark.parametrize("state", ["waking", "idle-stopped", "serving"])
def test_health_and_the_overview_pass_the_activator_state_on(state: str) -> None:
    mon = monitor(probe_triton_url=False, pool=_Pool())
    record = cast(ProbeResult, probe_record(TRITON, _status(state, 3.25)))
    mon.probe_records = lambda urls: {TRITON: record}  # type: ignore[method-assign]  # Redis in unit tests
    [health] = mon.health()["backends"]
    assert (health["state"], health["wake_estimate_s"]) == (state, 3.25)
    [row] = BackendOverview(mon, cast(Any, mon.cache)).overview()["backends"]
    assert (row["state"], row["state_since"], row["wake_estimate_s"]) == (state, record["state_since"], 3.25)
    assert redacted(row)["state"] == state, "a key without admin scope sees the state (not the reason)"


def test_a_backend_without_an_activator_has_no_state() -> None:
    mon = monitor(probe_triton_url=True, pool=_Pool())
    [health] = mon.health()["backends"]
    assert (health["state"], health["state_since"], health["wake_estimate_s"]) == (None, None, None)
