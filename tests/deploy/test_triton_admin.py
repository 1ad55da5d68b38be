"""Triton's repository API (and its server-wide controls) need an admin header on both protocols
(Triton v2.71.0 docs/customization_guide/inference_protocols.md, "Limit Endpoint Access": the
flags are --http-restricted-api and --grpc-restricted-protocol, <apis>:<key>=<value>); the key
comes from Secret kinfer-triton-admin, which only the Triton pod's two containers read."""

from __future__ import annotations

import pytest

from tests.deploy.support import KNATIVE, OVERLAYS, Doc, ksvcs, render

RESTRICTED = {"model-repository", "shared-memory", "statistics", "trace", "logging"}
SECRET = "kinfer-triton-admin"


def _restricted(args: list[str], flag: str) -> tuple[set[str], str, str]:
    found = [a for a in args if a.startswith(flag + "=")]
    assert len(found) == 1, f"{flag} missing"
    apis, _, rest = found[0].split("=", 1)[1].partition(":")
    key, _, value = rest.partition("=")
    return set(apis.split(",")), key, value


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_restricts_model_control_on_http_and_grpc(overlay: str) -> None:
    triton = ksvcs(render(KNATIVE / "overlays" / overlay))["triton"]["spec"]["template"]["spec"]
    server, agent = triton["containers"]
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        apis, key, value = _restricted(server["args"], flag)
        assert RESTRICTED <= apis, f"{flag}: {RESTRICTED - apis} left open"
        assert "inference" not in apis and "model-config" not in apis, "the functions read these without the key"
        assert key == "kinfer-triton-admin-key" and value == "$(TRITON_ADMIN_KEY)"
    env = {e["name"]: e for e in server.get("env", [])}
    assert env["TRITON_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "TRITON_ADMIN_KEY"}
    agent_env = {e["name"]: e for e in agent["env"]}
    assert agent["name"] == "model-agent"
    assert agent_env["TRITON_ADMIN_HEADER"]["value"] == "kinfer-triton-admin-key"
    assert agent_env["TRITON_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == SECRET


def _readers(docs: list[Doc]) -> set[str]:
    found = set()
    for name, svc in ksvcs(docs).items():
        spec = svc["spec"]["template"]["spec"]
        for c in spec["containers"]:
            refs = [e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") for e in c.get("env", [])]
            refs += [s.get("secretRef", {}).get("name") for s in c.get("envFrom", [])]
            if SECRET in refs:
                found.add(f"{name}/{c['name']}")
        for v in spec.get("volumes", []):
            assert v.get("secret", {}).get("secretName") != SECRET, f"{name} mounts the admin key"
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_triton_pod_reads_the_admin_key(overlay: str) -> None:
    assert _readers(render(KNATIVE / "overlays" / overlay)) == {"triton/triton", "triton/model-agent"}
