"""The Knative install composition of terraform/modules/knative, rendered offline (issue 10, blocker 1).

Every ``data "kustomization_overlay"`` of the module is rebuilt as a kustomization
over the release files it pins (stored in tests/fixtures/releases/, see the README
there), with the module's own patches, and rendered with ``kubectl kustomize``:
kustomize refuses a resource id listed twice, exactly as the kbst provider does at
plan time. Across overlays no id may repeat either: two ``kustomization_resource``
would then manage one object.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    KNATIVE_REPOS,
    RELEASES,
    TF,
    Doc,
    heredoc,
    knative_release,
    knative_versions,
    kustomize,
    local_values,
    parse,
    resource_id,
    typed,
    unquote,
    variable_default,
)

MODULE = TF / "modules" / "knative"
SAMPLE_VARS = {"var.domain": "kinfer.example.com"}
RELEASE_LOCAL = re.compile(r"^\$\{local\.(\w+)\}/([\w.-]+\.yaml)$")
RELEASE_URL = re.compile(
    r"^https://github\.com/([\w-]+/[\w-]+)/releases/download/knative-v\$\{var\.knative_versions\.(\w+)\}$"
)
# Release file -> the upstream repository that publishes it.
PUBLISHERS = {
    "serving-crds.yaml": "knative/serving",
    "serving-core.yaml": "knative/serving",
    "kourier.yaml": "knative-extensions/net-kourier",
    "eventing-crds.yaml": "knative/eventing",
    "eventing-core.yaml": "knative/eventing",
    "eventing-kafka-controller.yaml": "knative-extensions/eventing-kafka-broker",
    "eventing-kafka-source.yaml": "knative-extensions/eventing-kafka-broker",
    "eventing-kafka-sink.yaml": "knative-extensions/eventing-kafka-broker",
}


# Overlays of the module that render Kinfer's own folders, not release files: knative/system's
# NetworkPolicies (tests/deploy/test_network.py renders them).
OWN_OVERLAYS = {"network"}


def overlays() -> dict[str, dict[str, Any]]:
    found = {
        name: body
        for name, body in typed(parse(MODULE)["data"], "kustomization_overlay").items()
        if name not in OWN_OVERLAYS
    }
    assert found, "terraform/modules/knative declares no kustomization_overlay"
    return found


def release_files(body: dict[str, Any]) -> list[Path]:
    """The fixture of every release URL in ``resources``, checked against the repository that publishes it."""
    urls = {k: unquote(v) for k, v in local_values(MODULE).items()}
    files = []
    for entry in body.get("resources", []):
        match = RELEASE_LOCAL.match(unquote(entry))
        assert match, f"resource {entry} is not <release local>/<file>.yaml"
        base, name = urls[match.group(1)], match.group(2)
        repo = RELEASE_URL.match(base)
        assert repo and PUBLISHERS.get(name) == repo.group(1), f"{name} is not published by {base}"
        assert KNATIVE_REPOS[repo.group(2)] == repo.group(1), f"{base}: knative_versions.{repo.group(2)} is not its"
        path = knative_release(repo.group(2)) / name
        assert path.is_file(), (
            f"no fixture {path.relative_to(RELEASES.parents[2])}: see tests/fixtures/releases/README.md"
        )
        files.append(path)
    return files


def substitute(text: str) -> str:
    for ref, value in SAMPLE_VARS.items():
        text = text.replace("${" + ref + "}", value)
    assert "${" not in text, f"unknown interpolation in patch: {text}"
    return text


def patches(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The module's patches as kustomize ``patches`` entries."""
    found = []
    for patch in body.get("patches", []):
        entry: dict[str, Any] = {"patch": substitute(heredoc(patch["patch"]))}
        if patch.get("target"):
            entry["target"] = {k: unquote(v) for k, v in patch["target"][0].items() if k != "__is_block__"}
        found.append(entry)
    return found


def compose(name: str, body: dict[str, Any], tmp: Path, with_patches: bool = True) -> tuple[int, list[Doc], str]:
    """Render one overlay; without patches it is kustomize's accumulation step alone (where ids collide)."""
    work = tmp / f"{name}-{'patched' if with_patches else 'resources'}"
    work.mkdir()
    files = release_files(body)
    for path in files:
        shutil.copy(path, work / path.name)
    (work / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [p.name for p in files],
                "patches": patches(body) if with_patches else [],
            }
        )
    )
    rc, out, err = kustomize(work)
    return rc, [d for d in yaml.safe_load_all(out) if d] if rc == 0 else [], err


@pytest.fixture(scope="module")
def composed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, list[Doc], str]]:
    tmp = tmp_path_factory.mktemp("composition")
    return {name: compose(name, body, tmp) for name, body in overlays().items()}


def test_each_overlay_accumulates_without_a_duplicate_resource_id(tmp_path: Path) -> None:
    """Patches apply after accumulation, so they cannot repair a duplicate: resources alone decide."""
    results = {name: compose(name, body, tmp_path, with_patches=False) for name, body in overlays().items()}
    failed = {name: err.strip().splitlines()[-1] for name, (rc, _, err) in results.items() if rc != 0}
    assert not failed, f"kustomize refuses overlays of terraform/modules/knative: {failed}"


def test_every_pinned_release_file_has_a_fixture_of_the_pinned_version() -> None:
    readme = (RELEASES / "README.md").read_text()
    assert set(knative_versions()) == set(KNATIVE_REPOS), "one pinned release per Knative repository"
    for key in KNATIVE_REPOS:
        assert f"`{knative_release(key).name}/`" in readme, f"{knative_release(key).name}: note it in the README"
    for body in overlays().values():
        for path in release_files(body):
            assert f"`{path.name}`" in readme, f"{path.name}: note its source in tests/fixtures/releases/README.md"


def test_each_knative_minor_pair_matches() -> None:
    """Serving's ingress (net-kourier) and Eventing's Kafka extensions release in lockstep with their core:
    their minors must match (the module's validation says the same)."""
    versions = {k: v.rsplit(".", 1)[0] for k, v in knative_versions().items()}
    assert versions["serving"] == versions["kourier"] and versions["eventing"] == versions["eventing_kafka"]
    assert "var.knative_versions" in (MODULE / "variables.tf").read_text()
    assert variable_default(MODULE, "knative_versions") is None, "the root module pins the versions"


def test_each_overlay_renders_with_its_patches(composed: dict[str, tuple[int, list[Doc], str]]) -> None:
    failed = {name: err.strip().splitlines()[-1] for name, (rc, _, err) in composed.items() if rc != 0}
    assert not failed, f"kustomize cannot render overlays of terraform/modules/knative: {failed}"


def test_no_resource_id_is_applied_by_two_overlays(composed: dict[str, tuple[int, list[Doc], str]]) -> None:
    owner: dict[tuple[str, str, str, str], str] = {}
    for name, (rc, docs, _) in composed.items():
        assert rc == 0, f"overlay {name} does not render"
        for doc in docs:
            rid = resource_id(doc)
            assert rid not in owner, f"{rid} is in overlays {owner[rid]} and {name}"
            owner[rid] = name


def _all(composed: dict[str, tuple[int, list[Doc], str]]) -> list[Doc]:
    for name, (rc, _, err) in composed.items():
        assert rc == 0, f"overlay {name} does not render: {err}"
    return [d for _, docs, _ in composed.values() for d in docs]


def test_the_composition_installs_the_crd_of_every_kind_knative_uses(
    composed: dict[str, tuple[int, list[Doc], str]],
) -> None:
    crds = {
        (d["spec"]["group"], d["spec"]["names"]["kind"])
        for d in _all(composed)
        if d["kind"] == "CustomResourceDefinition"
    }
    assert {
        ("serving.knative.dev", "Service"),
        ("eventing.knative.dev", "KafkaSink"),
        ("sources.knative.dev", "KafkaSource"),
        ("sources.knative.dev", "SinkBinding"),
        ("sources.knative.dev", "PingSource"),
    } <= crds


def _config_map(docs: list[Doc], namespace: str, name: str) -> dict[str, str]:
    found = [d for d in docs if d["kind"] == "ConfigMap" and resource_id(d)[2:] == (namespace, name)]
    assert len(found) == 1, f"{namespace}/{name}: {len(found)} copies"
    return found[0].get("data", {})


def test_patches_reach_the_release_resources(composed: dict[str, tuple[int, list[Doc], str]]) -> None:
    docs = _all(composed)
    features = _config_map(docs, "knative-serving", "config-features")
    for flag in ("kubernetes.podspec-tolerations", "kubernetes.podspec-nodeselector", "kubernetes.podspec-affinity"):
        assert features.get(flag) == "enabled", f"config-features {flag} must be enabled for GPU node pools"
    assert _config_map(docs, "knative-serving", "config-domain").get("kinfer.example.com") == ""
    assert _config_map(docs, "knative-serving", "config-network")["ingress-class"].startswith("kourier.")
    assert _config_map(docs, "knative-serving", "config-autoscaler")["enable-scale-to-zero"] == "true"
    _config_map(docs, "knative-eventing", "config-tracing")  # exactly one copy is applied
    kourier = [d for d in docs if resource_id(d) == ("", "Service", "kourier-system", "kourier")]
    assert kourier and kourier[0]["spec"]["type"] == "ClusterIP", (
        "Kourier's gateway must not get a public load balancer"
    )


def _prio(body: dict[str, Any]) -> int | None:
    match = re.search(r"\.ids_prio\[(\d)\]", str(body.get("for_each", "")))
    return int(match.group(1)) if match else None


def test_release_resources_wait_for_their_controllers_and_have_timeouts() -> None:
    applied = {
        n: b for n, b in typed(parse(MODULE)["resource"], "kustomization_resource").items() if _prio(b) is not None
    }
    assert {_prio(b) for b in applied.values()} == {0, 1, 2}
    for name, body in applied.items():
        timeouts = body.get("timeouts") or [{}]
        assert {"create", "update"} <= set(timeouts[0]), f"kustomization_resource.{name}: no create/update timeouts"
        if _prio(body) == 1:  # controllers and webhook Deployments: ready before the webhooks register
            assert body.get("wait") is True, f"kustomization_resource.{name} must wait = true"
    for name, body in typed(parse(MODULE)["resource"], "helm_release").items():
        assert body.get("wait", True) is not False, f"helm_release.{name} must wait for its pods"
