"""A periodic trigger never keeps a scale-to-zero Service up for good (issue 19: the backends probe ticked
every minute, less than Knative's stable window plus grace, so `backends` never scaled to zero).

Knative's KPA scales a revision to zero once it has had no request for the stable window
(``autoscaling.knative.dev/window`` or config-autoscaler ``stable-window``), held by ``scale-down-delay``,
and then removes the last pod after the larger of ``scale-to-zero-grace-period`` and
``scale-to-zero-pod-retention-period`` (knative/serving, tag knative-v1.23.0,
``pkg/autoscaler/config/config.go``: StableWindow 60s, ScaleToZeroGracePeriod 30s,
ScaleToZeroPodRetentionPeriod 0s, ScaleDownDelay 0s, EnableScaleToZero true; the ``_example`` of
``config/core/configmaps/autoscaler.yaml``, in the release fixture, documents the same defaults and the
rule). terraform/modules/knative patches config-autoscaler over those. A tick of a PingSource is a request:
ticking more often than that idle time keeps a pod forever.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    KNATIVE,
    OVERLAYS,
    TF,
    Doc,
    annotations,
    heredoc,
    knative_release,
    ksvcs,
    of_kind,
    parse,
    render,
    render_with_component,
    typed,
    unquote,
)

# knative/serving knative-v1.23.0 pkg/autoscaler/config/config.go defaults (the fixture's _example agrees).
UPSTREAM_DEFAULTS = {
    "enable-scale-to-zero": "true",
    "stable-window": "60s",
    "scale-to-zero-grace-period": "30s",
    "scale-to-zero-pod-retention-period": "0s",
    "scale-down-delay": "0s",
}


def seconds(duration: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def tick_interval_s(schedule: str) -> float:
    """The shortest gap between two ticks of a cron schedule whose minute field is ``*``, ``*/N`` or a list of
    minutes (the other fields ``*``): the Service must be able to sleep between any two ticks."""
    minute, *rest = schedule.split()
    assert rest == ["*"] * 4, f"schedule {schedule!r}: only the minute field is understood here"
    if minute == "*":
        return 60.0
    if minute.startswith("*/"):
        step = int(minute[2:])
        assert 60 % step == 0, f"schedule {schedule!r}: */{step} does not divide the hour evenly"
        return step * 60.0
    ticks = sorted(int(m) for m in minute.split(","))
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)] + [60 - ticks[-1] + ticks[0]]
    return min(gaps) * 60.0


def autoscaler_config() -> dict[str, str]:
    """config-autoscaler as the cluster has it: upstream defaults, then terraform's patch."""
    fixture = (knative_release("serving") / "serving-core.yaml").read_text()
    example = fixture[fixture.index("name: config-autoscaler") :]
    for key in ("stable-window", "scale-to-zero-grace-period", "scale-to-zero-pod-retention-period"):
        documented = re.search(rf'^\s*{key}: "([^"]+)"', example, re.M)
        assert documented and documented.group(1) == UPSTREAM_DEFAULTS[key], f"{key}: the pinned release changed it"
    found = dict(UPSTREAM_DEFAULTS)
    overlay = typed(parse(TF / "modules" / "knative")["data"], "kustomization_overlay")["serving"]
    for patch in overlay["patches"]:
        if unquote(patch["target"][0].get("name")) == "config-autoscaler":
            found.update({k: str(v) for k, v in yaml.safe_load(heredoc(patch["patch"]))["data"].items()})
    return found


def idle_before_zero_s(svc: Doc, config: dict[str, str]) -> float | None:
    """How long a revision of ``svc`` must go without a request before its last pod goes (None: never)."""
    ann = annotations(svc)
    if config["enable-scale-to-zero"] != "true" or int(ann.get("autoscaling.knative.dev/min-scale", "0")) > 0:
        return None
    window = seconds(ann.get("autoscaling.knative.dev/window", config["stable-window"]))
    delay = seconds(ann.get("autoscaling.knative.dev/scale-down-delay", config["scale-down-delay"]))
    retention = seconds(
        ann.get(
            "autoscaling.knative.dev/scale-to-zero-pod-retention-period", config["scale-to-zero-pod-retention-period"]
        )
    )
    return window + delay + max(seconds(config["scale-to-zero-grace-period"]), retention)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    found = {name: render(KNATIVE / "overlays" / name) for name in OVERLAYS}
    found["prod+triton-warm"] = render_with_component(tmp_path_factory.mktemp("warm"), "prod", "triton-warm")
    return found


def _ticked(docs: list[Doc]) -> list[tuple[str, Doc, float]]:
    services = ksvcs(docs)
    found = []
    for name, ping in of_kind(docs, "PingSource", "sources.knative.dev").items():
        ref: dict[str, Any] = ping["spec"]["sink"]["ref"]
        assert ref["kind"] == "Service" and ref["name"] in services, f"PingSource {name}: sink {ref}"
        found.append((name, services[ref["name"]], tick_interval_s(ping["spec"]["schedule"])))
    return found


def test_no_periodic_trigger_keeps_a_scale_to_zero_service_up(rendered: dict[str, list[Doc]]) -> None:
    config = autoscaler_config()
    checked = 0
    for overlay, docs in rendered.items():
        for name, svc, interval in _ticked(docs):
            idle = idle_before_zero_s(svc, config)
            if idle is None:
                continue
            checked += 1
            assert interval > idle, (
                f"{overlay}: PingSource {name} ticks {svc['metadata']['name']} every {interval:.0f}s; it scales to "
                f"zero only after {idle:.0f}s without a request, so it never does"
            )
    assert checked >= len(rendered), "the backends probe is checked in every overlay"


def test_the_rule_refuses_a_tick_every_minute() -> None:
    """The rule itself: the minute tick of issue 19 against the backends Service as deployed."""
    config = autoscaler_config()
    backends = ksvcs(render(KNATIVE / "overlays" / "prod"))["backends"]
    idle = idle_before_zero_s(backends, config)
    assert idle == 90.0, "stable window 60s + grace 30s"
    assert tick_interval_s("*/1 * * * *") <= idle < tick_interval_s("*/5 * * * *")
    assert tick_interval_s("0,30 * * * *") == 1800.0 and tick_interval_s("5,10 * * * *") == 300.0
