"""Rollout gates with fake figures: hold until a step has its requests and time, step, promote at the last
step, roll back on the error rate (as soon as the errors pass the step's budget) and on the p99 ratio; the
figures of a step window and its p99 from histogram buckets; a bad policy is 400 naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from shared.backends.metrics import BUCKETS
from shared.errors import InvalidInput
from shared.lifecycle import gates
from shared.registry import VERSION

POLICY: gates.Policy = {
    "candidate": "2",
    "steps": [10, 50, 100],
    "min_requests": 100,
    "min_step_s": 30.0,
    "max_error_rate": 0.05,
    "max_p99_ratio": 1.5,
}


def _figures(
    requests: int, errors: int = 0, p99_ms: float | None = 10.0, base_p99_ms: float | None = 10.0, elapsed: float = 60
) -> gates.Figures:
    def version(n: int, e: int, p99: float | None) -> gates.VersionFigures:
        return {"requests": n, "errors": e, "error_rate": e / n if n else None, "p99_ms": p99}

    ratio = p99_ms / base_p99_ms if p99_ms is not None and base_p99_ms else None
    return {
        "baseline": version(1000, 0, base_p99_ms),
        "candidate": version(requests, errors, p99_ms),
        "p99_ratio": ratio,
        "elapsed_s": elapsed,
    }


def test_a_step_without_its_requests_or_its_time_holds() -> None:
    assert gates.decide(POLICY, 0, _figures(99))["action"] == "hold"
    held = gates.decide(POLICY, 0, _figures(500, elapsed=29))
    assert held["action"] == "hold" and "29/30 s" in held["reason"]


def test_a_step_within_its_gates_moves_to_the_next_and_the_last_promotes() -> None:
    stepped = gates.decide(POLICY, 0, _figures(100, errors=5))  # 5 % is allowed, not more
    assert stepped == {"action": "step", "reason": "gates held at 10 %: moving to 50 %"}
    assert gates.decide(POLICY, 1, _figures(100))["action"] == "promote"


def test_errors_past_the_budget_roll_back_at_once_before_the_step_is_complete() -> None:
    assert gates.decide(POLICY, 0, _figures(20, errors=5))["action"] == "hold"  # 5 of a 100-request budget
    decision = gates.decide(POLICY, 0, _figures(30, errors=6, elapsed=1))
    assert decision["action"] == "rollback" and "error rate gate: 6 of 30" in decision["reason"]


def test_an_error_rate_over_the_bound_on_a_full_step_rolls_back() -> None:
    assert gates.decide(POLICY, 1, _figures(400, errors=21))["action"] == "rollback"
    assert gates.decide(POLICY, 1, _figures(400, errors=20))["action"] == "promote"


def test_a_p99_past_the_ratio_rolls_back_and_no_baseline_traffic_skips_the_ratio() -> None:
    slow = gates.decide(POLICY, 0, _figures(200, p99_ms=31.0, base_p99_ms=10.0))
    assert slow["action"] == "rollback" and "latency gate" in slow["reason"] and "3.1x" in slow["reason"]
    assert gates.decide(POLICY, 0, _figures(200, p99_ms=15.0))["action"] == "step"  # exactly 1.5x is allowed
    assert gates.decide(POLICY, 0, _figures(200, p99_ms=90.0, base_p99_ms=None))["action"] == "step"


def _counts(ok: int, failed: int, bucket: int) -> gates.Counts:
    buckets = [0.0] * (len(BUCKETS) + 1)
    buckets[bucket] = ok + failed
    return {"outcomes": {"ok": ok, "backend_error": failed, "invalid_input": 7}, "buckets": buckets}


def test_a_window_counts_since_the_snapshot_and_ignores_the_callers_mistakes() -> None:
    then, now = _counts(100, 1, 3), _counts(300, 11, 3)
    found = gates.figures(gates.window(_counts(50, 0, 3), None), gates.window(now, then), 12.0)
    cand = found["candidate"]
    assert (cand["requests"], cand["errors"]) == (210, 10)  # invalid_input is the caller's, not the version's
    assert cand["error_rate"] == pytest.approx(10 / 210, abs=1e-4)
    assert BUCKETS[2] * 1000 < cand["p99_ms"] <= BUCKETS[3] * 1000  # type: ignore[operator]
    assert found["p99_ratio"] == pytest.approx(cand["p99_ms"] / found["baseline"]["p99_ms"], abs=1e-3)  # type: ignore[operator]


def test_p99_interpolates_within_its_bucket() -> None:
    buckets = [0.0] * (len(BUCKETS) + 1)
    buckets[0], buckets[5] = 99, 1  # 99 requests under 1 ms, one in (25, 50] ms
    assert gates.quantile(buckets, 0.99) == pytest.approx(BUCKETS[0])
    assert gates.quantile([0.0] * (len(BUCKETS) + 1), 0.99) is None


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "candidate"),
        ({"candidate": "v2"}, "candidate"),
        ({"candidate": "2", "steps": [50, 10, 100]}, "steps"),
        ({"candidate": "2", "steps": [10, 50]}, "steps"),
        ({"candidate": "2", "steps": [100]}, "steps"),
        ({"candidate": "2", "min_requests": 0}, "min_requests"),
        ({"candidate": "2", "min_requests": 1.5}, "min_requests"),
        ({"candidate": "2", "max_error_rate": 2}, "max_error_rate"),
        ({"candidate": "2", "max_p99_ratio": 0.5}, "max_p99_ratio"),
        ({"candidate": "2", "min_step_s": True}, "min_step_s"),
        ({"candidate": "2", "bogus": 1}, "bogus"),
    ],
)
def test_a_bad_policy_is_400_naming_its_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        gates.parse_policy(body, VERSION)
    assert caught.value.status == 400 and caught.value.field == field


def test_a_policy_gets_its_defaults() -> None:
    policy = gates.parse_policy({"candidate": "2"}, VERSION)
    assert policy["steps"] == [10, 50, 100] and policy["min_requests"] == 100 and policy["max_p99_ratio"] == 1.5
