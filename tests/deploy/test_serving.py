"""Serving behaviour of knative/ that the platform's promises rest on (issue 10).

- min-scale 0 on Triton must be real: nothing may call TRITON_URL on a timer. The
  PingSource ticks the backends function every minute; with a scale-to-zero Triton it
  must leave TRITON_URL alone (PROBE_TRITON_URL=false), or the activator wakes Triton
  and the 15m scale-down delay never runs out.
- result URLs are presigned for an S3 host clients reach, over the Gateway's TLS.
- containerConcurrency is what the server serves at once, checked by running the
  image's own command line; the autoscaler target is derived from it.
- liveness answers without PostgreSQL, Redis, S3 or Triton.
- Triton tolerates GPU taints, and Knative's feature flags accept it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re

import pytest
import yaml
from starlette.requests import Request

from shared import cli
from shared.cli import serve as serve_cli
from shared.settings import Settings
from shared.web import server
from tests.deploy.support import (
    KNATIVE,
    OVERLAYS,
    ROOT,
    S3_ROUTE_VALUES,
    TF,
    Doc,
    annotations,
    heredoc,
    ksvcs,
    local_values,
    of_kind,
    parse,
    render,
    render_with_component,
    s3_route,
    typed,
    unquote,
)


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


def test_result_urls_are_presigned_for_a_host_clients_reach_over_tls(rendered: dict[str, list[Doc]]) -> None:
    """result_url names S3_PUBLIC_ENDPOINT_URL; with the in-cluster MinIO that is its route on the Gateway."""
    for overlay, docs in rendered.items():
        assert "S3_PUBLIC_ENDPOINT_URL" in config(docs), f"{overlay}: the setting must be in kinfer-config"
    platform = TF / "modules" / "platform"
    public = str(local_values(platform)["config"]["S3_PUBLIC_ENDPOINT_URL"])
    assert "var.s3_public_endpoint_url" in public and "https://${local.s3_host}" in public
    route = s3_route(S3_ROUTE_VALUES)
    assert route["spec"]["parentRefs"] == [{"name": "kinfer", "sectionName": "https"}]
    assert route["spec"]["hostnames"] == [S3_ROUTE_VALUES["local.s3_host"]]
    assert all(ref["name"] == "minio" for rule in route["spec"]["rules"] for ref in rule["backendRefs"])


def _function_services(docs: list[Doc]) -> dict[str, Doc]:
    return {n: s for n, s in ksvcs(docs).items() if n != "triton"}


def _image_command() -> list[str]:
    """The container's command line: the Dockerfile's ENTRYPOINT and CMD (exec form)."""
    text = (ROOT / "Dockerfile").read_text().split("AS runtime", 1)[1]
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    return entry + cmd


def served_at_once(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> int:
    """How many requests the image's server serves at once with this container env (uvicorn workers x threads
    of blocking handlers; async handlers never wait on that pool, so this is the bound that matters)."""
    command = _image_command()
    assert command[0] == "kinfer", command
    seen: dict[str, int] = {}
    monkeypatch.setattr(serve_cli, "function_app", lambda target, source: object())
    monkeypatch.setattr(
        server, "serve", lambda app, host, port, workers=1, threads=8: seen.update(workers=workers, threads=threads)
    )
    for name in ("SERVER_CONCURRENCY", "FUNCTION_TARGET", "FUNCTION_SOURCE", "PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(KNATIVE.parent)  # FUNCTION_SOURCE is relative to the image's /app
    assert cli.main(command[1:]) == 0
    return seen["workers"] * seen["threads"]


def test_container_concurrency_is_what_the_server_serves_and_the_target_follows(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for overlay, docs in rendered.items():
        for name, svc in _function_services(docs).items():
            spec, ann = svc["spec"]["template"]["spec"], annotations(svc)
            c = spec["containers"][0]
            env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
            served = served_at_once(env, monkeypatch)
            assert spec.get("containerConcurrency") == served, (
                f"{overlay}: {name}: containerConcurrency {spec.get('containerConcurrency')} but the server "
                f"serves {served} at once: requests would queue in the pod, unseen by the autoscaler"
            )
            assert "autoscaling.knative.dev/target" not in ann, (
                f"{overlay}: {name}: no fixed target; Knative derives it from containerConcurrency"
            )
            utilization = int(ann.get("autoscaling.knative.dev/target-utilization-percentage", "0"))
            assert 50 <= utilization <= 90, f"{overlay}: {name}: target-utilization-percentage {utilization}"


class _Tripwire:
    """Services whose clients record every use: a liveness answer must use none of them."""

    def __init__(self) -> None:
        self.settings = Settings.from_env(environ={})
        self.touched: list[str] = []

    def __getattr__(self, name: str) -> object:  # db, cache, s3, component(...): PostgreSQL, Redis, S3, Triton
        self.touched.append(name)
        raise ConnectionError(f"liveness used services.{name}")


def liveness_answer(svc: Doc, monkeypatch: pytest.MonkeyPatch) -> tuple[int, list[str]]:
    """Call the Service's entry point as its liveness probe does, with every dependency failing."""
    c = svc["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    probe = c["livenessProbe"]["httpGet"]
    module = importlib.import_module("functions." + env["FUNCTION_SOURCE"].split("/")[1] + ".main")
    services = _Tripwire()
    monkeypatch.setattr(module, "function_services", lambda: services)
    scope = {"type": "http", "method": "GET", "path": probe["path"], "query_string": b"", "headers": []}
    response = asyncio.run(getattr(module, env["FUNCTION_TARGET"])(Request(scope)))
    return response.status_code, services.touched


def test_liveness_never_depends_on_postgresql_redis_or_triton(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for overlay, docs in rendered.items():
        for name, svc in _function_services(docs).items():
            c = svc["spec"]["template"]["spec"]["containers"][0]
            assert c["readinessProbe"]["httpGet"]["path"] == "/health", f"{overlay}: {name}: readiness on /health"
            status, touched = liveness_answer(svc, monkeypatch)
            assert status == 200 and not touched, (
                f"{overlay}: {name}: liveness {c['livenessProbe']['httpGet']['path']} answers {status} and uses "
                f"{touched}: an outage of a dependency would restart every pod"
            )


# Pod spec fields Knative refuses unless config-features enables them.
GATED_FIELDS = {
    "tolerations": "kubernetes.podspec-tolerations",
    "nodeSelector": "kubernetes.podspec-nodeselector",
    "affinity": "kubernetes.podspec-affinity",
}


def enabled_features() -> dict[str, str]:
    """config-features data that terraform/modules/knative patches in."""
    serving = typed(parse(TF / "modules" / "knative")["data"], "kustomization_overlay")["serving"]
    for patch in serving["patches"]:
        if unquote(patch["target"][0].get("name")) == "config-features":
            return yaml.safe_load(heredoc(patch["patch"]))["data"]
    return {}


def test_triton_tolerates_gpu_taints_and_knative_accepts_it(rendered: dict[str, list[Doc]]) -> None:
    features = enabled_features()
    assert all(features.get(flag) == "enabled" for flag in GATED_FIELDS.values()), "GPU pools need all three"
    for overlay, docs in rendered.items():
        triton = ksvcs(docs)["triton"]["spec"]["template"]["spec"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in triton.get("tolerations", [])
        for name, svc in ksvcs(docs).items():
            for field, flag in GATED_FIELDS.items():
                if field in svc["spec"]["template"]["spec"]:
                    assert features.get(flag) == "enabled", f"{overlay}: {name} uses {field}: enable {flag}"


def test_sidecar_probes_are_enabled_and_nothing_probes_through_the_sidecar_port(rendered: dict[str, list[Doc]]) -> None:
    """The model agent's readiness gates Triton's pod only with Knative's multi-container probing; without
    the flag Knative rejects probes on a second container. Liveness of the agent stays on its own process."""
    features = enabled_features()
    for overlay, docs in rendered.items():
        for name, svc in ksvcs(docs).items():
            containers = svc["spec"]["template"]["spec"]["containers"]
            if any("readinessProbe" in c for c in containers[1:]):
                assert features.get("multi-container-probing") == "enabled", (
                    f"{overlay}: {name} probes a sidecar: enable multi-container-probing in config-features"
                )
        agent = next(
            c for c in ksvcs(docs)["triton"]["spec"]["template"]["spec"]["containers"] if c["name"] == "model-agent"
        )
        assert agent["readinessProbe"]["httpGet"]["path"] == "/ready", overlay
