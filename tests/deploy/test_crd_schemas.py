"""Every Knative Serving, Eventing, Eventing-Kafka and Strimzi resource in knative/ against its upstream CRD.

kubernetes-validate knows the core kinds only. The CRDs of the pinned releases are in
tests/fixtures/releases/ (see the README there); their ``openAPIV3Schema`` is turned
into JSON Schema the way the API server reads it: ``x-kubernetes-int-or-string``,
``nullable`` and ``x-kubernetes-preserve-unknown-fields`` are honoured, and an unknown
field is an error (kubectl and the kbst provider ask for strict field validation).
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.support import (
    KNATIVE,
    OVERLAYS,
    Doc,
    group_of,
    knative_release,
    render,
    render_with_component,
    strimzi_release,
)

CRD_FILES = [
    knative_release("serving") / "serving-crds.yaml",
    knative_release("eventing") / "eventing-crds.yaml",
    knative_release("eventing_kafka") / "eventing-kafka-controller.yaml",
    *sorted(strimzi_release().glob("*.yaml")),
]
CHECKED_GROUPS = {
    "serving.knative.dev",
    "eventing.knative.dev",
    "sources.knative.dev",
    "messaging.knative.dev",
    "kafka.strimzi.io",
}
# Groups in knative/ that are neither core (kubernetes-validate) nor checked here, and why.
UNCHECKED_GROUPS = {"gateway.networking.k8s.io": "Gateway API CRDs ship with the Envoy Gateway chart, not stored"}
CORE_GROUPS = {"", "apps", "batch", "networking.k8s.io", "rbac.authorization.k8s.io", "policy"}


def to_json_schema(node: Any) -> Any:
    """A CRD structural schema as JSON Schema (draft 7)."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    schema = {
        k: to_json_schema(v)
        for k, v in node.items()
        if k
        not in {
            "x-kubernetes-int-or-string",
            "nullable",
            "x-kubernetes-preserve-unknown-fields",
            "description",
            "format",
        }
        and not k.startswith("x-kubernetes-")
    }
    if node.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


def load_crds() -> dict[tuple[str, str, str], dict[str, Any]]:
    """{(group, version, kind): JSON Schema of the resource}."""
    found = {}
    for path in CRD_FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                schema = to_json_schema(version["schema"]["openAPIV3Schema"])
                # Every object has these; the API server checks metadata itself.
                schema.setdefault("properties", {}).update(
                    apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"}
                )
                found[(spec["group"], version["name"], spec["names"]["kind"])] = schema
    return found


@pytest.fixture(scope="module")
def crds() -> dict[tuple[str, str, str], dict[str, Any]]:
    return load_crds()


@pytest.fixture(scope="module")
def resources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    found = {name: render(KNATIVE / "overlays" / name) for name in OVERLAYS}
    found["prod+triton-warm"] = render_with_component(tmp_path_factory.mktemp("warm"), "prod", "triton-warm")
    found["strimzi"] = render(KNATIVE / "strimzi")
    return found


def test_the_fixtures_hold_the_crds_of_the_kinds_kinfer_uses(crds: dict[tuple[str, str, str], Any]) -> None:
    assert {
        ("serving.knative.dev", "v1", "Service"),
        ("eventing.knative.dev", "v1alpha1", "KafkaSink"),
        ("sources.knative.dev", "v1beta1", "KafkaSource"),
        ("sources.knative.dev", "v1", "SinkBinding"),
        ("sources.knative.dev", "v1", "PingSource"),
        ("kafka.strimzi.io", "v1", "Kafka"),
        ("kafka.strimzi.io", "v1", "KafkaTopic"),
        ("kafka.strimzi.io", "v1", "KafkaNodePool"),
        ("kafka.strimzi.io", "v1", "KafkaUser"),
    } <= set(crds)
    assert all(path.is_file() for path in CRD_FILES), "rebuild tests/fixtures/releases (build.py)"


def test_every_resource_group_is_checked_somewhere(resources: dict[str, list[Doc]]) -> None:
    for where, docs in resources.items():
        for doc in docs:
            group = group_of(doc)
            assert group in CORE_GROUPS | CHECKED_GROUPS | set(UNCHECKED_GROUPS), (
                f"{where}: {doc['kind']} of {group} is validated by nothing"
            )


def _violations(doc: Doc, crds: dict[tuple[str, str, str], Any]) -> list[str]:
    group, _, version = doc["apiVersion"].partition("/")
    schema = crds.get((group, version, doc["kind"]))
    if schema is None:
        return [f"no CRD for {doc['apiVersion']} {doc['kind']} in the fixtures"]
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


def test_every_knative_and_strimzi_resource_validates_against_its_crd(
    resources: dict[str, list[Doc]], crds: dict[tuple[str, str, str], Any]
) -> None:
    failures = []
    checked = 0
    for where, docs in resources.items():
        for doc in docs:
            if group_of(doc) in CHECKED_GROUPS:
                checked += 1
                failures += [f"{where}: {doc['kind']} {doc['metadata']['name']}: {v}" for v in _violations(doc, crds)]
    assert checked >= 30
    assert not failures, "resources the API server would refuse:\n" + "\n".join(failures)


def test_the_schema_check_refuses_what_the_api_server_refuses(crds: dict[tuple[str, str, str], Any]) -> None:
    """The conversion keeps the schema strict: unknown fields and wrong types are errors."""
    source = {
        "apiVersion": "sources.knative.dev/v1beta1",
        "kind": "KafkaSource",
        "metadata": {"name": "s"},
        "spec": {
            "topics": ["t"],
            "bootstrapServers": ["b:9092"],
            "ordering": "unordered",
            "sink": {"ref": {"apiVersion": "v1", "kind": "Service", "name": "x"}},
        },
    }
    assert not _violations(source, crds)
    assert _violations({**source, "spec": {**source["spec"], "delivery.order": "unordered"}}, crds)
    service = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {"template": {"spec": {"containerConcurrency": "8", "containers": [{"image": "x"}]}}},
    }
    assert any("containerConcurrency" in v for v in _violations(service, crds))
