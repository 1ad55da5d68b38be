"""Secrets: S3 through a workload identity renders no static key (and without it every S3 workload
gets its own); no sensitive value in a plain Terraform output; a documented remote encrypted state
backend that leaves local `terraform init` working."""

from __future__ import annotations

import re
from pathlib import Path

from tests.deploy.support import ROOT, TF, Doc, ksvcs, modules, named, of_kind, parse, render_platform, unquote

VALUES = {
    "var.image": "r.example.com/k:1",
    "local.agent_image": "r.example.com/k:1",
    "var.kafka_names.chunk_topic": "kinfer.batch.chunks",
    "var.kafka_names.request_topic": "kinfer.batch.requests",
    "var.kafka_names.worker_group": "kinfer-batch-worker",
    "var.kafka_names.intake_group": "kinfer-batch-intake",
    "var.data_namespace": "kinfer-data",
}
S3_WORKLOADS = {
    "batch",
    "batch-intake",
    "batch-worker",
    "batch-deadletter",
    "infer",
    "models",
    "models-public",
    "triton",
}


def _s3_refs(docs: list[Doc]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, svc in ksvcs(docs).items():
        for c in svc["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef", {})
                if e["name"].startswith("S3_") or ref.get("name", "").startswith("kinfer-s3-"):
                    found.setdefault(name, set()).add(e["name"])
    return found


def test_static_keys_without_a_workload_identity(tmp_path: Path) -> None:
    docs = render_platform(tmp_path, "prod", VALUES)
    refs = _s3_refs(docs)
    assert set(refs) == S3_WORKLOADS
    assert all(keys == {"S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"} for keys in refs.values())


def test_a_workload_identity_renders_no_static_key(tmp_path: Path) -> None:
    docs = render_platform(tmp_path, "prod", VALUES, components=("s3-workload-identity",))
    assert not _s3_refs(docs), "static S3 keys left with a workload identity"
    assert "kinfer-s3-" not in str(docs)
    assert of_kind(docs, "ConfigMap")["kinfer-config"]["data"]["S3_CREDENTIALS"] == "ambient"
    # The same for Triton's agent with the warm component on top.
    warm = render_platform(tmp_path / "w", "prod", VALUES, components=("triton-warm", "s3-workload-identity"))
    assert not _s3_refs(warm)


def test_terraform_creates_no_s3_secret_with_a_workload_identity() -> None:
    data = parse(TF / "modules" / "data")
    outputs = named(data["output"])
    assert "var.s3_workload_identity ? []" in str(outputs["s3_workloads"]["value"])
    assert "var.s3_workload_identity ? []" in str(outputs["s3_credentials"]["value"])
    platform = (TF / "modules" / "platform" / "main.tf").read_text()
    assert 'local.workload_identity ? ["${local.knative_dir}/components/s3-workload-identity"]' in platform
    assert "for_each = toset(var.s3_workloads)" in platform  # kubernetes_secret.s3: empty list, no Secret
    root = (TF / "main.tf").read_text()
    assert "s3_workload_identity = length(var.s3_workload_identity_annotations) > 0" in root


SENSITIVE_HINTS = re.compile(r"password|secret|private_key|random_password|credentials|_url\b|tls_key|token", re.I)


def _sensitive_vars(directory: Path) -> set[str]:
    return {n for n, v in named(parse(directory).get("variable", [])).items() if v.get("sensitive") is True}


def test_no_sensitive_value_in_a_plain_output() -> None:
    failures = []
    for directory in [TF, *modules()]:
        sensitive_vars = _sensitive_vars(directory)
        for name, body in named(parse(directory).get("output", [])).items():
            value = str(body.get("value"))
            refs = set(re.findall(r"var\.(\w+)", value))
            hint = SENSITIVE_HINTS.search(value.replace("s3_endpoint_url", "").replace("s3_public", ""))
            if (refs & sensitive_vars or (hint and "random_password" in value) or "credentials" in value) and body.get(
                "sensitive"
            ) is not True:
                failures.append(f"{directory.relative_to(ROOT)} output {name}")
            if "random_password" in value or "private_key" in value:
                if body.get("sensitive") is not True:
                    failures.append(f"{directory.relative_to(ROOT)} output {name}: a generated secret")
    root_outputs = named(parse(TF)["output"])
    for name, body in root_outputs.items():
        for module_output in re.findall(r"module\.(\w+)\.(\w+)", str(body.get("value"))):
            target = named(parse(TF / "modules" / module_output[0])["output"])[module_output[1]]
            if target.get("sensitive") is True:
                assert body.get("sensitive") is True, f"root output {name} re-exports a sensitive value"
    assert not failures, "\n".join(failures)


def test_the_remote_encrypted_state_backend_is_documented_and_local_init_still_works() -> None:
    versions = (TF / "versions.tf").read_text()
    assert re.search(r"^\s*#\s*backend \"s3\"", versions, re.M) and "encrypt      = true" in versions
    assert "use_lockfile" in versions
    assert not re.search(r"^\s*backend\s", versions, re.M), "an active backend would break local terraform init"
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert "## Terraform state" in ops and "encrypt" in ops


def test_sensitive_root_variables() -> None:
    sensitive = _sensitive_vars(TF)
    for name in ("database_url", "redis_url", "tls_private_key", "s3_secret_access_key", "kafka_sasl_password"):
        assert name in sensitive, name
    assert unquote(named(parse(TF)["variable"])["s3_workload_identity_annotations"]["default"]) == {}
