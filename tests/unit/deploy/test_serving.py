"""Serving behaviour of knative/ that the platform's promises rest on (issue 10).

- min-scale 0 on Triton must be real: nothing may call TRITON_URL on a timer. The
  PingSource ticks the backends function every minute; with a scale-to-zero Triton it
  must leave TRITON_URL alone (PROBE_TRITON_URL=false), or the activator wakes Triton
  and the 15m scale-down delay never runs out.
"""

from __future__ import annotations

import pytest

from tests.unit.deploy.support import (KNATIVE, OVERLAYS, Doc, annotations, ksvcs, of_kind, render,
                                       render_with_component)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    found = {name: render(KNATIVE / "overlays" / name) for name in OVERLAYS}
    found["prod+triton-warm"] = render_with_component(tmp_path_factory.mktemp("warm"), "prod", "triton-warm")
    return found


def config(docs: list[Doc]) -> dict[str, str]:
    return of_kind(docs, "ConfigMap")["kinfer-config"]["data"]


def test_nothing_probes_a_scale_to_zero_triton(rendered: dict[str, list[Doc]]) -> None:
    for overlay, docs in rendered.items():
        min_scale = annotations(ksvcs(docs)["triton"])["autoscaling.knative.dev/min-scale"]
        probes = config(docs).get("PROBE_TRITON_URL", "true")  # Settings' default is true
        pings = [p["spec"]["sink"]["ref"]["name"] for p in of_kind(docs, "PingSource").values()]
        assert "triton" not in pings, f"{overlay}: a PingSource must never call Triton itself"
        if min_scale == "0":
            assert probes == "false", f"{overlay}: Triton scales to zero but the backends tick probes TRITON_URL"
        else:
            assert probes == "true", f"{overlay}: a warm Triton should be probed"
    assert annotations(ksvcs(rendered["prod+triton-warm"])["triton"])["autoscaling.knative.dev/min-scale"] == "1"
