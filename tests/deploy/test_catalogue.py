"""The function catalogue (shared/catalogue.py) is what knative/ deploys, what the public route and
the local gateway send each path to, and what the local stack starts: one table, read everywhere."""

from __future__ import annotations

import re
from typing import Any

import pytest

from shared.catalogue import FUNCTIONS, public_routes
from tests.deploy.support import KNATIVE, OVERLAYS, ROOT, TF, env_of, ksvcs, of_kind, parse, render, unquote


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(KNATIVE / "overlays" / name) for name in OVERLAYS}


def _function_container(svc: dict[str, Any]) -> dict[str, Any]:
    [found] = [c for c in svc["spec"]["template"]["spec"]["containers"] if "FUNCTION_TARGET" in env_of(c)]
    return found


def test_every_function_runs_as_its_knative_service_and_nothing_else_does(rendered: dict[str, Any]) -> None:
    for overlay, docs in rendered.items():
        services = {n: s for n, s in ksvcs(docs).items() if n != "triton"}
        expected = {name: fn for fn in FUNCTIONS for name in {fn.service, fn.routed_service}}
        assert set(services) == set(expected), f"{overlay}: Knative Services differ from shared/catalogue.py"
        for name, fn in expected.items():
            env = env_of(_function_container(services[name]))
            assert (env["FUNCTION_TARGET"]["value"], env["FUNCTION_SOURCE"]["value"]) == (fn.target, fn.source), name
            assert re.search(rf"^(?:async )?def {fn.target}\(", (ROOT / fn.source).read_text(), re.M), fn.source


def test_the_public_route_sends_each_prefix_to_its_function(rendered: dict[str, Any]) -> None:
    expected = {prefix: fn.routed_service for prefix, fn in public_routes().items()}
    for overlay, docs in rendered.items():
        routed = {}
        for rule in of_kind(docs, "HTTPRoute")["kinfer-public"]["spec"]["rules"]:
            service = rule["filters"][0]["urlRewrite"]["hostname"].split(".")[0]
            routed.update({m["path"]["value"]: service for m in rule["matches"]})
            assert {m["path"]["type"] for m in rule["matches"]} == {"PathPrefix"}
        assert routed == expected, overlay


def test_the_functions_that_emit_events_and_only_those_have_a_sink(rendered: dict[str, Any]) -> None:
    for overlay, docs in rendered.items():
        bound = {b["spec"]["subject"]["name"] for b in of_kind(docs, "SinkBinding").values()}
        assert bound == {fn.service for fn in FUNCTIONS if fn.emits_events}, overlay


def test_every_function_service_asks_for_an_api_key_in_the_cluster(rendered: dict[str, Any]) -> None:
    """Cluster-local is no authentication: any pod reaches a cluster-local Service. Only the local stack's
    own port of the registry answers without a key (the original platform's clients use it)."""
    for overlay, docs in rendered.items():
        for name, svc in ksvcs(docs).items():
            if name != "triton":
                auth = env_of(_function_container(svc)).get("AUTH_REQUIRED", {}).get("value", "true")
                assert auth == "true", f"{overlay}: {name} answers without an API key"
    assert [fn.folder for fn in FUNCTIONS if fn.local_without_auth] == ["models"]


def test_terraforms_per_workload_s3_users_name_deployed_workloads() -> None:
    data = parse(TF / "modules" / "data")
    [policies] = [
        {unquote(k) for k in block["minio_policies"]} for block in data["locals"] if "minio_policies" in block
    ]
    workloads = {name for fn in FUNCTIONS for name in (fn.service, fn.routed_service)} | {"triton"}
    assert set(policies) <= workloads, set(policies) - workloads


def test_the_local_gateway_and_stack_serve_the_catalogue() -> None:
    from shared.cli.serve import gateway_mounts
    from shared.localstack import stack

    mounts = {prefix: (module, entry) for prefix, module, entry in gateway_mounts()}
    for prefix, fn in public_routes().items():
        assert mounts[prefix] == (fn.module, fn.target), prefix
    local = {f.folder: f for f in stack.functions()}
    assert {fn.folder: (fn.target, fn.port, fn.service) for fn in FUNCTIONS} == {
        name: (f.target, f.port, f.service) for name, f in local.items()
    }
    ports = [fn.port for fn in FUNCTIONS] + [
        8080,
        stack.RELAY_PORT,
        stack.S3_PORT,
        stack.AGENT_PORT,
        *stack.TRITON_PORTS,
    ]
    assert len(ports) == len(set(ports)), "every local port is used once"
    sink = dict(local["batch"].env)["K_SINK"]
    assert all(
        ("K_SINK", sink) in f.env
        for f in stack.functions()
        if f.folder in {fn.folder for fn in FUNCTIONS if fn.emits_events}
    )


def test_every_workload_that_answers_inference_may_write_captures() -> None:
    """Payload capture runs wherever a model answers: /v1/infer and /v2 (infer), ``:predict`` on the registry's
    internal and public Services (models, models-public) and async requests (batch-worker). Without PutObject on
    the capture bucket, every captured batch of that workload is dropped as ``write_failed``."""
    data = parse(TF / "modules" / "data")
    [policies] = [block["minio_policies"] for block in data["locals"] if "minio_policies" in block]
    for workload in ("infer", "models", "models-public", "batch-worker"):
        statements = policies[workload] if workload in policies else policies[f'"{workload}"']
        writes = {
            unquote(resource)
            for statement in statements
            if "s3:PutObject" in [unquote(a) for a in statement.get("actions", [])]
            or "local.write" in str(statement.get("actions"))
            for resource in statement["resources"]
        }
        assert any("local.capture" in r for r in writes), f"{workload} cannot write CAPTURE_BUCKET: {writes}"
