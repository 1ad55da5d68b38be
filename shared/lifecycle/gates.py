"""Rollout gates: the policy of an automatic rollout, the figures of one step, and the decision (pure code).

A step is measured from the per-version counters the data plane already keeps cluster-wide in Redis
(``shared.lifecycle.metrics``: requests by outcome and the latency histogram per model version): the
controller snapshots them when a step starts, and a step's figures are the counts since. ``decide`` then
says, for the candidate at its current step: ``rollback`` as soon as its errors exceed what the error-rate
bound allows over the step's minimum (so a bad candidate fails at most about ``max_error_rate *
min_requests`` requests a step), or when its p99 passes ``max_p99_ratio`` times the baseline's; ``hold``
until the step has ``min_requests`` candidate requests and ``min_step_s`` seconds; else ``step`` to the next
percentage, or ``promote`` when the next is 100. Nothing here reads a clock, a database or Redis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, TypedDict

from shared import validation as v
from shared.backends.metrics import BUCKETS
from shared.errors import InvalidInput

MAX_STEPS = 10
# Outcomes that are the caller's doing, not the version's: never counted against a candidate.
CALLER_OUTCOMES = frozenset(
    {"invalid_input", "payload_too_large", "rate_limited", "unauthorized", "forbidden", "not_found"}
)
Action = Literal["hold", "step", "promote", "rollback"]


class Policy(TypedDict):
    """How a rollout moves: the candidate's share at each step (ascending, ending at 100) and its gates."""

    candidate: str
    steps: list[int]
    min_requests: int
    min_step_s: float
    max_error_rate: float
    max_p99_ratio: float


class Counts(TypedDict):
    """One version's counters: requests by outcome, and latency bucket counts (``BUCKETS`` then +Inf)."""

    outcomes: dict[str, int]
    buckets: list[float]


class VersionFigures(TypedDict):
    requests: int
    errors: int
    error_rate: float | None
    p99_ms: float | None


class Figures(TypedDict):
    """What a decision used: both versions' figures over the step, the p99 ratio and the step's age."""

    baseline: VersionFigures
    candidate: VersionFigures
    p99_ratio: float | None
    elapsed_s: float


class Decision(TypedDict):
    action: Action
    reason: str


def parse_policy(body: object, version_pattern: object) -> Policy:
    """The body of ``POST .../rollout``; every bad field named."""
    import re

    body = v.require_object(body)
    fields = ("candidate", "steps", "min_requests", "min_step_s", "max_error_rate", "max_p99_ratio")
    v.reject_unknown(body, fields)
    pattern = version_pattern if isinstance(version_pattern, re.Pattern) else None
    candidate = v.string(body.get("candidate"), "candidate", max_len=32, pattern=pattern)
    steps = body.get("steps", [10, 50, 100])
    if (
        not isinstance(steps, list)
        or not 2 <= len(steps) <= MAX_STEPS
        or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 100 for s in steps)
        or steps != sorted(set(steps))
        or steps[-1] != 100
    ):
        raise InvalidInput(
            f"steps must be 2 to {MAX_STEPS} increasing integer percentages ending at 100, e.g. [10, 50, 100]",
            field="steps",
        )
    return {
        "candidate": candidate,
        "steps": steps,
        "min_requests": _integer(body, "min_requests", 100, 1, 10_000_000),
        "min_step_s": _number(body, "min_step_s", 60.0, 0.0, 7 * 86400),
        "max_error_rate": _number(body, "max_error_rate", 0.01, 0.0, 1.0),
        "max_p99_ratio": _number(body, "max_p99_ratio", 1.5, 1.0, 1000.0),
    }


def _number(body: Mapping[str, object], field: str, default: float, lo: float, hi: float) -> float:
    raw = body.get(field, default)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not lo <= float(raw) <= hi:
        raise InvalidInput(f"{field} must be a number from {lo:g} to {hi:g}", field=field)
    return float(raw)


def _integer(body: Mapping[str, object], field: str, default: int, lo: int, hi: int) -> int:
    raw = body.get(field, default)
    if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
        raise InvalidInput(f"{field} must be an integer from {lo} to {hi}", field=field)
    return raw


def window(now: Counts, then: Counts | None) -> Counts:
    """The counts since ``then`` (a snapshot taken when the step started)."""
    if then is None:
        return now
    outcomes = {k: n - then["outcomes"].get(k, 0) for k, n in now["outcomes"].items()}
    buckets = [n - (then["buckets"][i] if i < len(then["buckets"]) else 0) for i, n in enumerate(now["buckets"])]
    return {"outcomes": {k: n for k, n in outcomes.items() if n > 0}, "buckets": [max(0.0, b) for b in buckets]}


def quantile(buckets: list[float], q: float) -> float | None:
    """The ``q`` quantile in seconds from bucket counts (linear within a bucket, as Prometheus does)."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank, running = q * total, 0.0
    bounds = (*BUCKETS, BUCKETS[-1] * 2)
    for i, count in enumerate(buckets):
        if count and running + count >= rank:
            lo = bounds[i - 1] if i > 0 else 0.0
            hi = bounds[min(i, len(bounds) - 1)]
            return lo + (hi - lo) * (rank - running) / count
        running += count
    return bounds[-1]


def version_figures(counts: Counts) -> VersionFigures:
    own = {k: n for k, n in counts["outcomes"].items() if k not in CALLER_OUTCOMES}
    requests = sum(own.values())
    errors = requests - own.get("ok", 0)
    p99 = quantile(counts["buckets"], 0.99)
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": round(errors / requests, 4) if requests else None,
        "p99_ms": None if p99 is None else round(p99 * 1000, 3),
    }


def figures(baseline: Counts, candidate: Counts, elapsed_s: float) -> Figures:
    base, cand = version_figures(baseline), version_figures(candidate)
    ratio = None
    if base["p99_ms"] and cand["p99_ms"] is not None:
        ratio = round(cand["p99_ms"] / base["p99_ms"], 3)
    return {"baseline": base, "candidate": cand, "p99_ratio": ratio, "elapsed_s": round(elapsed_s, 3)}


def decide(policy: Policy, step: int, found: Figures) -> Decision:
    """What to do with a rollout at ``steps[step]`` given the step's figures."""
    cand = found["candidate"]
    budget = policy["max_error_rate"] * max(cand["requests"], policy["min_requests"])
    if cand["errors"] > math.floor(budget + 1e-9) or (
        cand["requests"] >= policy["min_requests"] and (cand["error_rate"] or 0.0) > policy["max_error_rate"]
    ):
        return {
            "action": "rollback",
            "reason": f"error rate gate: {cand['errors']} of {cand['requests']} candidate requests failed "
            f"(at most {policy['max_error_rate']:.2%} of {max(cand['requests'], policy['min_requests'])} allowed)",
        }
    if cand["requests"] < policy["min_requests"] or found["elapsed_s"] < policy["min_step_s"]:
        return {
            "action": "hold",
            "reason": f"step has {cand['requests']}/{policy['min_requests']} candidate requests and "
            f"{found['elapsed_s']:.0f}/{policy['min_step_s']:.0f} s",
        }
    ratio = found["p99_ratio"]
    if ratio is not None and ratio > policy["max_p99_ratio"]:
        return {
            "action": "rollback",
            "reason": f"latency gate: candidate p99 {cand['p99_ms']} ms is {ratio}x the baseline's "
            f"{found['baseline']['p99_ms']} ms (at most {policy['max_p99_ratio']}x allowed)",
        }
    following = policy["steps"][step + 1] if step + 1 < len(policy["steps"]) else 100
    if following >= 100:
        return {"action": "promote", "reason": "every gate held at the last step: candidate takes 100 %"}
    return {"action": "step", "reason": f"gates held at {policy['steps'][step]} %: moving to {following} %"}
