"""Knative Serving's admission rules and the gateway defaults we rely on, checked offline on the
rendered overlays. The CRD schema checks (test_crd_schemas.py) prove structure; these prove what
Knative's validating webhook and Envoy Gateway do with it. Each rule cites where it comes from, at the
Serving release terraform pins (knative_versions.serving; re-checked against the sources of the tag
at every bump, see tests/fixtures/releases/README.md):

- [validation] knative/serving, tag knative-v1.23.0, ``pkg/apis/serving/k8s_validation.go``:
  ``reservedEnvVars`` (PORT, K_SERVICE, K_CONFIGURATION, K_REVISION; ``reservedSidecarEnvVars`` is
  the same less PORT), ``reservedPorts``, ``reservedContainerNames``, ``validateContainersPorts``
  ("more than one container port is set"), ``validPortNames`` (h2c, http1 or empty),
  ``validateContainers`` ("multi-container is off"), ``validateSidecarContainer`` (liveness, readiness
  and, since #16594 "add startupProbe validation", startup probes of a sidecar: refused without
  multi-container-probing, else ``validateProbe`` with "Probe port must be specified") and
  ``ValidateUserContainer`` (liveness, readiness and startup probes of the serving container:
  ``validateProbe``'s "Probe port must match container port" for a named port). Up to knative-v1.16.0
  a sidecar's startup probe was not validated at all; the rule here follows the pinned tag.
- [ports] the same tag, ``pkg/networking/constants.go``: BackendHTTPPort 8012, BackendHTTP2Port 8013,
  QueueAdminPort 8022, AutoscalingQueueMetricsPort 9090, UserQueueMetricsPort 9091; and
  ``runtime.ProfilingDefaultPort`` 8008 (knative.dev/pkg ``observability/runtime/pprof.go`` at the
  commit serving's go.mod pins, 521cb33b33dd; knative-v1.16.0 took ProfilingPort 8008 from
  ``knative.dev/pkg/profiling``).
- [features] the same tag, ``pkg/apis/config/features.go`` ``defaultFeaturesConfig`` (unchanged since
  knative-v1.16.0 for the flags below); the ``fieldmask.go`` masks gate tolerations, node selectors and
  affinity behind their ``kubernetes.podspec-*`` flags.
- [gateway] Envoy Gateway v1.9 documentation (``site/content/en/v1.9/tasks/traffic/http-timeouts.md`` at
  tag v1.9.0), "HTTP Timeouts": "The default request timeout is set to 15 seconds in Envoy Proxy";
  HTTPRoute ``rules[].timeouts.request`` (Gateway API GEP-1742) raises it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    KNATIVE,
    OVERLAYS,
    S3_ROUTE_VALUES,
    TF,
    env_of,
    heredoc,
    ksvcs,
    of_kind,
    parse,
    render,
    s3_route,
    typed,
    unquote,
)

# [validation] + [ports]
RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}
RESERVED_SIDECAR_ENV = RESERVED_ENV - {"PORT"}
RESERVED_PORTS = {8012, 8013, 8022, 9090, 9091, 8008}
RESERVED_CONTAINER_NAMES = {"queue-proxy"}
PORT_NAMES = {"", "h2c", "http1"}
# [features]: the defaults of knative-v1.23.0 for the flags our Services need.
FEATURE_DEFAULTS = {
    "multi-container": "enabled",
    "multi-container-probing": "disabled",
    "kubernetes.podspec-volumes-emptydir": "enabled",
    "kubernetes.podspec-tolerations": "disabled",
    "kubernetes.podspec-nodeselector": "disabled",
    "kubernetes.podspec-affinity": "disabled",
}
ENVOY_DEFAULT_REQUEST_TIMEOUT_S = 15  # [gateway]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(KNATIVE / "overlays" / name) for name in OVERLAYS}


def features() -> dict[str, str]:
    """config-features as terraform/modules/knative patches it over the release defaults."""
    module = parse(TF / "modules" / "knative")
    found = dict(FEATURE_DEFAULTS)
    for overlay in typed(module["data"], "kustomization_overlay").values():
        for patch in overlay.get("patches", []):
            if unquote((patch.get("target") or [{}])[0].get("name")) == "config-features":
                found.update(yaml.safe_load(heredoc(unquote(patch["patch"])))["data"])
    return found


def containers(svc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(svc["spec"]["template"]["spec"]["containers"])


def serving(svc: dict[str, Any]) -> dict[str, Any]:
    with_ports = [c for c in containers(svc) if c.get("ports")]
    return with_ports[0] if with_ports else containers(svc)[0]


def probes(c: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(kind, c[kind]) for kind in ("readinessProbe", "livenessProbe", "startupProbe") if c.get(kind)]


def listening_ports(c: dict[str, Any]) -> set[int]:
    """Every port a container declares, probes, or is told to listen on (an env ``*_PORT``)."""
    found = {int(p["containerPort"]) for p in c.get("ports", [])}
    for _, probe in probes(c):
        for action in ("httpGet", "tcpSocket", "grpc"):
            port = (probe.get(action) or {}).get("port")
            if isinstance(port, int):
                found.add(port)
    for name, env in env_of(c).items():
        if name.endswith("_PORT") and str(env.get("value", "")).isdigit():
            found.add(int(env["value"]))
    return found


def every_service(rendered: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{overlay}: {name}", svc) for overlay, docs in rendered.items() for name, svc in ksvcs(docs).items()]


def test_no_container_sets_an_environment_variable_knative_reserves(rendered: dict[str, Any]) -> None:
    for where, svc in every_service(rendered):
        main = serving(svc)
        for c in containers(svc):
            reserved = RESERVED_ENV if c is main else RESERVED_SIDECAR_ENV
            taken = reserved & set(env_of(c))
            assert not taken, f"{where}/{c['name']}: {sorted(taken)} is reserved by Knative (webhook refuses it)"


def test_no_container_uses_a_port_knative_reserves(rendered: dict[str, Any]) -> None:
    for where, svc in every_service(rendered):
        for c in containers(svc):
            taken = RESERVED_PORTS & listening_ports(c)
            assert not taken, f"{where}/{c['name']}: port {sorted(taken)} is queue-proxy's or reserved by Knative"


def test_one_serving_port_named_for_its_protocol(rendered: dict[str, Any]) -> None:
    for where, svc in every_service(rendered):
        declared = [p for c in containers(svc) for p in c.get("ports", [])]
        assert len(declared) <= 1, f"{where}: more than one container port is set"
        assert len(containers(svc)) == 1 or declared, f"{where}: a multi-container Service needs its serving port"
        for port in declared:
            assert port.get("name", "") in PORT_NAMES and port.get("protocol", "TCP") == "TCP", where
        for c in containers(svc):
            assert c["name"] not in RESERVED_CONTAINER_NAMES, where


def test_probes_are_ones_the_webhook_accepts(rendered: dict[str, Any]) -> None:
    enabled = features()
    for where, svc in every_service(rendered):
        main = serving(svc)
        port_name = (main.get("ports") or [{}])[0].get("name", "http")
        if len(containers(svc)) > 1:
            assert enabled["multi-container"] == "enabled", where
        for c in containers(svc):
            for kind, probe in probes(c):
                action = next(a for a in ("httpGet", "tcpSocket", "grpc", "exec") if a in probe)
                port = (probe.get(action) or {}).get("port")
                if c is main:
                    assert not isinstance(port, str) or port == port_name, f"{where}/{c['name']} {kind}: port name"
                else:
                    assert enabled["multi-container-probing"] == "enabled", f"{where}/{c['name']}: sidecar {kind}"
                    if action in ("httpGet", "tcpSocket"):
                        assert port not in (None, 0, ""), (
                            f"{where}/{c['name']} {kind}: a sidecar's probe names its port"
                        )


def test_pod_fields_behind_feature_flags_have_their_flag_enabled(rendered: dict[str, Any]) -> None:
    enabled = features()
    gates = {
        "tolerations": "kubernetes.podspec-tolerations",
        "nodeSelector": "kubernetes.podspec-nodeselector",
        "affinity": "kubernetes.podspec-affinity",
    }
    for where, svc in every_service(rendered):
        spec = svc["spec"]["template"]["spec"]
        for field, flag in gates.items():
            if spec.get(field):
                assert enabled[flag] == "enabled", f"{where}: {field} needs {flag}"
        if any("emptyDir" in v for v in spec.get("volumes", [])):
            assert enabled["kubernetes.podspec-volumes-emptydir"] == "enabled", where


def _seconds(duration: str) -> float:
    found = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert found, f"not a Gateway API duration: {duration!r}"
    return int(found.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[found.group(2)]


def test_every_public_rule_outlasts_its_services_own_timeout(rendered: dict[str, Any]) -> None:
    """Without ``timeouts`` Envoy cuts at 15 s: a cold start, an upload or Kinfer's own 503/504 never arrives."""
    for overlay, docs in rendered.items():
        services = ksvcs(docs)
        for rule in of_kind(docs, "HTTPRoute")["kinfer-public"]["spec"]["rules"]:
            service = rule["filters"][0]["urlRewrite"]["hostname"].split(".")[0]
            limit = services[service]["spec"]["template"]["spec"]["timeoutSeconds"]
            paths = [m["path"]["value"] for m in rule["matches"]]
            request = _seconds(rule.get("timeouts", {}).get("request", f"{ENVOY_DEFAULT_REQUEST_TIMEOUT_S}s"))
            assert request > limit, f"{overlay} {paths}: route timeout {request}s <= {service}'s {limit}s"


def test_the_s3_route_does_not_cut_large_transfers() -> None:
    route = s3_route(S3_ROUTE_VALUES)
    for rule in route["spec"]["rules"]:
        request = rule.get("timeouts", {}).get("request", f"{ENVOY_DEFAULT_REQUEST_TIMEOUT_S}s")
        assert _seconds(request) >= 600, "presigned batch inputs and results through the S3 route"


def test_a_caller_who_waits_through_a_cold_start_is_not_cut_first(rendered: dict[str, Any]) -> None:
    """``Prefer: wait=N`` holds an inference up to WAIT_MAX_S: the infer Service (Knative cuts at its
    timeoutSeconds) and the route carrying it (Envoy cuts at timeouts.request) must outlast it."""
    for overlay, docs in rendered.items():
        config = of_kind(docs, "ConfigMap")["kinfer-config"]["data"]
        wait = float(config["WAIT_MAX_S"])
        infer = ksvcs(docs)["infer"]["spec"]["template"]["spec"]["timeoutSeconds"]
        assert 0 < wait < infer, f"{overlay}: WAIT_MAX_S {wait} must stay below infer's timeoutSeconds {infer}"
        for rule in of_kind(docs, "HTTPRoute")["kinfer-public"]["spec"]["rules"]:
            if rule["filters"][0]["urlRewrite"]["hostname"].startswith("infer."):
                assert _seconds(rule["timeouts"]["request"]) > infer, overlay
