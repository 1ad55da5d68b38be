"""Rules of terraform/ read from the parsed HCL (issue 10): what makes a plan or an apply fail.

- A module-level ``depends_on`` defers every data source of the called module to
  apply time, so a ``for_each`` over one of them is unknown at plan ("Invalid
  for_each argument", hashicorp/terraform#28131). The same holds for a data source
  with its own ``depends_on``. Ordering goes through resource-level ``depends_on``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.deploy.support import KNATIVE, OVERLAYS, TF, all_typed, modules, named, of_kind, parse, render, unquote

DATA_REF = re.compile(r"\bdata\.([a-z0-9_]+)\.([a-z0-9_]+)\b")


def module_calls(directory: Path) -> dict[str, dict[str, Any]]:
    return named(parse(directory).get("module", []))


def data_feeding_for_each(directory: Path) -> set[tuple[str, str]]:
    """(type, name) of the data sources whose attributes a for_each of this module iterates."""
    blocks = parse(directory)
    fed = set()
    for body in [
        *all_typed(blocks.get("resource", [])).values(),
        *all_typed(blocks.get("data", [])).values(),
        *module_calls(directory).values(),
    ]:
        fed |= set(DATA_REF.findall(str(body.get("for_each", ""))))
    return fed


def test_the_rule_sees_the_platform_modules_for_each_over_its_overlay() -> None:
    assert ("kustomization_overlay", "kinfer") in data_feeding_for_each(TF / "modules" / "platform")
    assert ("kustomization_overlay", "serving") in data_feeding_for_each(TF / "modules" / "knative")


def test_no_module_level_depends_on_onto_a_module_whose_data_sources_feed_for_each() -> None:
    for directory in [TF, *modules()]:
        for name, call in module_calls(directory).items():
            if not call.get("depends_on"):
                continue
            fed = data_feeding_for_each((directory / unquote(call["source"])).resolve())
            assert not fed, (
                f"module {name} has depends_on = {call['depends_on']}: its data sources "
                f"{sorted('.'.join(f) for f in fed)} would be read at apply time and the for_each "
                "over them is unknown at plan; order with resource-level depends_on instead"
            )


def test_no_data_source_feeding_for_each_has_depends_on() -> None:
    for directory in [TF, *modules()]:
        fed = data_feeding_for_each(directory)
        for key, body in all_typed(parse(directory).get("data", [])).items():
            if key in fed:
                assert not body.get("depends_on"), f"{directory.name}: data.{'.'.join(key)} has depends_on"


def test_the_platform_is_applied_after_what_it_runs_on() -> None:
    """Without module depends_on, the platform's first resources wait for the other modules' ``ready`` outputs."""
    call = module_calls(TF)["platform"]
    prerequisites = str(call.get("prerequisites"))
    for module in ("knative", "kafka", "data"):
        assert f"module.{module}.ready" in prerequisites, f"platform must wait for module.{module}.ready"
        output = named(parse(TF / "modules" / module)["output"])["ready"]
        assert output.get("depends_on"), f"module {module}: output ready must depend on what the module applies"
    platform = parse(TF / "modules" / "platform")
    gate = all_typed(platform["resource"])[("terraform_data", "prerequisites")]
    assert "var.prerequisites" in str(gate["input"])
    namespace = all_typed(platform["resource"])[("kubernetes_namespace", "kinfer")]
    assert "terraform_data.prerequisites" in str(namespace.get("depends_on"))


# -- images and charts ---------------------------------------------------------------------
# Where every image and chart the Terraform installs comes from, and why that source is
# maintained. Bitnami is not here: its versioned docker.io/bitnami images were removed
# (bitnami/containers#83267) and the charts pinned to them failed the first apply.
MAINTAINED = {
    "https://cloudnative-pg.github.io/charts": "CloudNativePG operator chart (CNCF project); its version pins "
    "ghcr.io/cloudnative-pg/cloudnative-pg",
    "ghcr.io/cloudnative-pg/postgresql": "CloudNativePG's PostgreSQL operand images, rebuilt for every minor release",
    "https://valkey.io/valkey-helm/": "the Valkey project's own chart (Linux Foundation)",
    "docker.io/valkey/valkey": "the Valkey project's official image",
    "oci://quay.io/strimzi-helm": "Strimzi operator chart (CNCF project), the OCI repository its README installs "
    "from (https://strimzi.io/charts/ is deprecated since 0.36); its version pins the quay.io/strimzi images",
    "oci://docker.io/envoyproxy": "Envoy Gateway chart (Envoy project, CNCF); its version pins docker.io/envoyproxy",
    "nvcr.io/nvidia/tritonserver": "NVIDIA's Triton Inference Server releases on NGC (monthly)",
    "ghcr.io/kinfer/kinfer": "this project's image; terraform replaces it with -var image",
    "ghcr.io/kinfer/kinfer-agent": "this project's model agent, tagged with its agent version (never pushed "
    "twice, scripts/push-images); terraform derives it from -var image or takes -var agent_image",
    "docker.io/pgsty/silo": "Silo (PGSTY), the maintained community fork of MinIO: regular releases with "
    "security fixes (CVE-2025-62506 inherited, later CVEs fixed; docs/security/advisories.md of pgsty/silo)",
    "docker.io/pgsty/mc": "Silo's MinIO client, released with the server, for the chart's setup jobs",
}
# Installed although no longer maintained, only as an optional in-cluster default that an
# existing endpoint variable switches off, and said so in docs/operations.md.
TOLERATED_UNMAINTAINED = {
    "https://charts.min.io/": (
        "s3_endpoint_url",
        "MinIO community chart (repository archived): templates only, it runs Silo's images",
    ),
}
IMAGE = re.compile(
    r"^(?P<repo>[a-z0-9.-]+\.[a-z]+(?::\d+)?/[a-z0-9._/-]+)(?::(?P<tag>[\w.-]+))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
EXACT_VERSION = re.compile(r"^v?\d+\.\d+\.\d+$")
VAR_REF = re.compile(r"^\$\{var\.([a-z0-9_]+)\}$")


def resolve(directory: Path, value: Any) -> str:
    """A literal, or the default of the variable it names."""
    text = unquote(value)
    match = VAR_REF.match(str(text))
    if match:
        text = unquote(named(parse(directory)["variable"])[match.group(1)].get("default"))
    assert isinstance(text, str) and "${" not in text, f"{directory.name}: cannot resolve {value}"
    return text


def helm_releases() -> dict[str, tuple[Path, dict[str, Any]]]:
    return {
        f"{d.name}.{name}": (d, body)
        for d in modules()
        for (rtype, name), body in all_typed(parse(d).get("resource", [])).items()
        if rtype == "helm_release"
    }


def images() -> dict[str, str]:
    """Every image reference in terraform/ (variable defaults) and in knative/ (containers), with where it is."""
    found = {}
    for directory in [TF, *modules()]:
        for name, body in named(parse(directory).get("variable", [])).items():
            default = unquote(body.get("default"))
            if isinstance(default, str) and IMAGE.match(default) and "/" in default.split(":")[0]:
                found[default] = f"{directory.name} var.{name}"
    for overlay in OVERLAYS:
        for doc in render(KNATIVE / "overlays" / overlay):
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                found[c["image"]] = f"knative overlay {overlay}: {doc['kind']} {doc['metadata']['name']}"
    return found


def _source_allowed(source: str, where: str) -> None:
    if source in MAINTAINED:
        return
    assert source in TOLERATED_UNMAINTAINED, f"{where}: {source} is not a known maintained source (MAINTAINED)"
    switch, _ = TOLERATED_UNMAINTAINED[source]
    module = TF / "modules" / "data"
    assert f"var.{switch}" in (module / "main.tf").read_text(), f"{source} must be switched off by {switch}"
    docs = (TF.parent / "docs" / "operations.md").read_text()
    assert "no longer maintained" in docs and switch in docs, f"docs/operations.md must say {source} is unmaintained"


def test_terraform_installs_nothing_from_bitnami() -> None:
    for path in TF.rglob("*.tf"):
        code = re.sub(r"(?m)^\s*#.*$", "", path.read_text())
        assert "bitnami" not in code.lower(), f"{path}: Bitnami's versioned images were removed"


def test_every_chart_is_pinned_to_an_exact_version_of_a_maintained_repository() -> None:
    releases = helm_releases()
    assert {"data.cnpg", "data.valkey", "data.minio", "kafka.strimzi", "knative.envoy_gateway"} <= set(releases)
    for where, (directory, body) in releases.items():
        _source_allowed(resolve(directory, body["repository"]), f"helm_release.{where}")
        version = resolve(directory, body["version"])
        assert EXACT_VERSION.match(version), f"helm_release.{where}: version {version} is not exact"
        if resolve(directory, body["repository"]) in TOLERATED_UNMAINTAINED:
            assert "local.install_" in str(body.get("count")), f"helm_release.{where} must be optional"


def test_every_image_is_pinned_to_a_maintained_repository() -> None:
    found = images()
    assert any(i.startswith("ghcr.io/cloudnative-pg/postgresql:") for i in found)
    assert any(i.startswith("nvcr.io/nvidia/tritonserver:") for i in found)
    for image, where in found.items():
        match = IMAGE.match(image)
        assert match, f"{where}: {image} is not registry/repository:tag"
        tag, digest = match.group("tag"), match.group("digest")
        assert digest or (tag and tag != "latest" and re.search(r"\d+[.-]\d+", tag)), (
            f"{where}: {image} is not pinned (a floating or missing tag)"
        )
        _source_allowed(match.group("repo"), where)


# -- the migration step -----------------------------------------------------------------------
def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _block(body: dict[str, Any], *path: str) -> dict[str, Any]:
    for key in path:
        body = body[key][0] if isinstance(body[key], list) else body[key]
    return body


def test_the_migration_runs_per_image_to_completion_before_new_revisions() -> None:
    platform = parse(TF / "modules" / "platform")
    resources = all_typed(platform["resource"])
    job = resources[("kubernetes_job_v1", "migrate")]
    name = unquote(_block(job, "metadata")["name"])
    assert "sha256(var.image)" in name, f"the Job's name {name} must change with the image (a Job is immutable)"
    assert job.get("wait_for_completion") is True and {"create", "update"} <= set(_block(job, "timeouts"))
    assert "ttl_seconds_after_finished" not in _block(job, "spec"), "a TTL-deleted Job is recreated: drift"
    rollout = resources[("kustomization_resource", "p1")]
    assert "kubernetes_job_v1.migrate" in str(rollout.get("depends_on")), "Services must wait for the migration"


def test_the_terraform_job_is_the_manual_one_of_knative_jobs() -> None:
    jobs = render(KNATIVE / "jobs")
    manual = of_kind(jobs, "Job")["kinfer-db-migrate"]
    pod = manual["spec"]["template"]["spec"]
    container = pod["containers"][0]
    job = all_typed(parse(TF / "modules" / "platform")["resource"])[("kubernetes_job_v1", "migrate")]
    spec = _block(job, "spec")
    assert (spec["backoff_limit"], spec["active_deadline_seconds"]) == (
        manual["spec"]["backoffLimit"],
        manual["spec"]["activeDeadlineSeconds"],
    )
    tf_pod = _block(spec, "template", "spec")
    tf_container = _block(tf_pod, "container")
    assert unquote(tf_pod["restart_policy"]) == pod["restartPolicy"]
    assert tf_pod["automount_service_account_token"] is pod["automountServiceAccountToken"] is False
    assert [unquote(c) for c in tf_container["command"]] == container["command"]
    assert unquote(tf_container["image_pull_policy"]) == container["imagePullPolicy"]
    tf_env = {unquote(e["name"]) for e in tf_container["env"]}
    assert tf_env == {e["name"] for e in container["env"]}
    manual_sc = container["securityContext"]
    for key, value in _block(tf_container, "security_context").items():
        if key in {"__is_block__", "capabilities", "seccomp_profile"}:
            continue
        assert manual_sc[_camel(key)] == value, f"securityContext.{_camel(key)} differs"
    labels = _block(_block(tf_pod, "security_context"), "seccomp_profile")
    assert unquote(labels["type"]) == pod["securityContext"]["seccompProfile"]["type"]
